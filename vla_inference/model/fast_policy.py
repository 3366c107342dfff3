"""The GPU serving arrangement of a ``VlaPolicy`` (``FastPolicy``): the torch backend's fast path.

The same functions as ``VlaPolicy`` (same parameters, same math), rearranged for a GPU serving one
observation with K samples. They are plain tensor functions, so they run (and are tested) on the
CPU in fp32 as well, and ``torch.compile`` can fuse their elementwise work (norms, RoPE, gating,
GeGLU, softmax) around the cuBLAS GEMMs when ``compile`` is on.

* q/k/v and gate/up projections are single GEMMs: the module weights become row views of one
  fused tensor per layer (names, shapes and values unchanged, no extra memory).
* The time conditioning of the action expert (time MLP and the 37 per-layer adaRMS modulation
  GEMMs) depends only on the flow time, so it is computed once per steps value into a table; a
  step reads its row.
* Expert attention: the prefix keys/values are shared by the K samples and never concatenated
  with the action keys. Scores against the prefix are one GEMM over all K * horizon * heads
  queries, scores against the sample's own action keys a batched GEMM; one softmax (float32) over
  both, then two GEMMs for the output. Queries stay in [sample, token, head] order (rows of
  attention are independent), so no transposes.
* Patch convolutions (stride == kernel) run as one GEMM over the patches.
* Camera views (``encode_views``): a request's two view rows (all cameras, camera 0 alone) share one
  ViT pass per camera and one backbone pass, row 1's unmasked tokens after row 0's under a
  block-diagonal mask, instead of two full rows.

Stage 1 reaches the policy through ``VisionEngine``'s kernel hooks (``use_backbone``,
``use_patch_kernels``): ``FastPolicy.install`` sets them, ``uninstall`` restores the policy's own
modules. Stage 2 (``velocity``) is called directly by the serving loop. This module sits next to the
policy it mirrors and, like it, knows nothing of the runtime.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import flex_attention

from vla_inference.model.policy import (
    MASK_BIAS,
    MIN_FLOW_TIME,
    PrefixTrim,
    ViTBlock,
    VlaPolicy,
    key_bias,
    rope_tables,
    time_embedding,
)

# Expert attention: shared-prefix GEMMs; SDPA over the concatenated keys (A/B); one FlexAttention kernel over
# the concatenated keys with the mask as a score bias.
ATTENTIONS = ("split", "joint", "flex")
PREFIX_ATTENTIONS = ("manual", "sdpa")  # prefix attention: GEMMs over padded keys, or SDPA with a bias


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


def _weighted_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma RMSNorm ``x / rms(x) * (1 + weight)`` in float32, rounded once."""
    return (_rms(x, eps) * (1.0 + weight.float())).to(x.dtype)


def _modulated_norm(x: torch.Tensor, one_plus_scale: torch.Tensor, shift: torch.Tensor,
                    eps: float) -> torch.Tensor:
    """pi0.5 adaptive RMSNorm with precomputed (1 + scale) and shift, in float32, rounded once."""
    return (_rms(x, eps) * one_plus_scale.float() + shift.float()).to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on [..., L, heads, D] with cos/sin [L, 1, D]."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def _split_qkv(qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int) -> Any:
    """[B, L, (heads + 2 kv_heads) D] -> q [B, L, heads, D], k/v [B, L, kv_heads, D] (views)."""
    batch, length, _ = qkv.shape
    q_end, k_end = heads * head_dim, (heads + kv_heads) * head_dim
    q = qkv[..., :q_end].view(batch, length, heads, head_dim)
    k = qkv[..., q_end:k_end].view(batch, length, kv_heads, head_dim)
    v = qkv[..., k_end:].view(batch, length, kv_heads, head_dim)
    return q, k, v


def _prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                      manual: bool = False, mask_bias: float = MASK_BIAS) -> torch.Tensor:
    """Grouped-query attention inside the prefix: q [B, P, H, D], k/v [B, P, G, D], bias [B, 1, 1, P]
    (per key) or [B, 1, P, P] (per query and key: several sequences in one pass) -> [B, P, H * D].
    The H / G query heads of a group are folded into the query axis.

    ``manual``: two GEMMs and a float32 softmax over keys zero-padded to a multiple of 16 (masked),
    instead of SDPA with a bias (which on an H100 runs one key/value head with ~55 query tiles)."""
    batch, length, heads, head_dim = q.shape
    groups = k.shape[2]
    per_query = bias.shape[-2] != 1
    if manual:
        per_group = heads // groups
        folded = q.reshape(batch, length, groups, per_group, head_dim).permute(0, 2, 1, 3, 4)
        folded = folded.reshape(batch, groups, length * per_group, head_dim)
        keys, values = k.transpose(1, 2), v.transpose(1, 2)
        padded = length + (-length) % 16
        if padded != length:
            keys = F.pad(keys, (0, 0, 0, padded - length))
            values = F.pad(values, (0, 0, 0, padded - length))
            bias = F.pad(bias, (0, padded - length), value=mask_bias)
        scores = torch.matmul(folded, keys.transpose(2, 3)).float() * head_dim ** -0.5
        if per_query:  # rows are (query, head of the group): one bias row per query
            scores = (scores.view(batch, groups, length, per_group, padded) + bias.float()[:, :, :, None, :]).view(
                batch, groups, length * per_group, padded)
        else:
            scores = scores + bias.float()
        out = torch.matmul(torch.softmax(scores, dim=-1).to(q.dtype), values)
        out = out.reshape(batch, groups, length, per_group, head_dim).permute(0, 2, 1, 3, 4)
        return out.reshape(batch, length, heads * head_dim)
    if per_query:
        bias = bias.repeat_interleave(heads // groups, dim=-2)
    if groups == 1:
        out = F.scaled_dot_product_attention(q.reshape(batch, 1, length * heads, head_dim),
                                             k.reshape(batch, 1, length, head_dim),
                                             v.reshape(batch, 1, length, head_dim), attn_mask=bias)
        return out.reshape(batch, length, heads * head_dim)
    per_group = heads // groups
    folded = q.reshape(batch, length, groups, per_group, head_dim).permute(0, 2, 1, 3, 4)
    out = F.scaled_dot_product_attention(folded.reshape(batch, groups, length * per_group, head_dim),
                                         k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias)
    out = out.reshape(batch, groups, length, per_group, head_dim).permute(0, 2, 1, 3, 4)
    return out.reshape(batch, length, heads * head_dim)


def _backbone_layer(x: torch.Tensor, w_in: torch.Tensor, wqkv: torch.Tensor, wo: torch.Tensor,
                    w_post: torch.Tensor, wgu: torch.Tensor, wd: torch.Tensor, cos: torch.Tensor,
                    sin: torch.Tensor, bias: torch.Tensor, eps: float, heads: int, kv_heads: int,
                    manual_attention: bool = False, mask_bias: float = MASK_BIAS) -> Any:
    """One Gemma prefix layer: returns (x after the layer, rotated k, v [B, P, G, D])."""
    h = _weighted_norm(x, w_in, eps)
    q, k, v = _split_qkv(F.linear(h, wqkv), heads, kv_heads, cos.shape[-1])
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    x = x + F.linear(_prefix_attention(q, k, v, bias, manual_attention, mask_bias), wo)
    gate, up = F.linear(_weighted_norm(x, w_post, eps), wgu).chunk(2, dim=-1)
    return x + F.linear(F.gelu(gate, approximate="tanh") * up, wd), k, v


def _backbone_kv(x: torch.Tensor, w_in: torch.Tensor, wkv: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor, eps: float, kv_heads: int) -> Any:
    """The last prefix layer: only its keys/values are used (rotated k, v [B, P, G, D])."""
    batch, length, _ = x.shape
    kv = F.linear(_weighted_norm(x, w_in, eps), wkv)
    head_dim = cos.shape[-1]
    k = kv[..., : kv_heads * head_dim].view(batch, length, kv_heads, head_dim)
    v = kv[..., kv_heads * head_dim:].view(batch, length, kv_heads, head_dim)
    return _rope(k, cos, sin), v


def _expert_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kp: torch.Tensor,
                      vp: torch.Tensor, bias: torch.Tensor, attention: str = "split") -> torch.Tensor:
    """Action tokens attend to the prefix (masked by ``bias``) and to their own sample's tokens.

    q [K, H, heads, D]; k/v [K, H, G, D]; kp/vp [G, P, D] with bias [P] (one prefix shared by the K
    samples) or kp/vp [K, G, P, D] with bias [K, P] (each sample its own, for camera views); bias
    float32 (0 or MASK_BIAS); for 'flex' the bias is ``flex_key_bias``'s [K, P + H] instead.
    Returns [K, H, heads * D]. ``attention``: 'split' (below); 'joint' the reference layout (prefix
    repeated K times and concatenated with the action keys, one SDPA call), kept for A/B; 'flex' the
    same concatenated keys through one FlexAttention kernel (scores, float32 online softmax and output
    fused; the mask is a per-key score bias; ``torch.compile`` makes it one Triton kernel, eager it is
    the unfused reference). 'split': a shared prefix is one GEMM over all K * H * heads queries,
    per-sample prefixes a batched GEMM; then one softmax over both key sets.
    """
    samples, horizon, heads, head_dim = q.shape
    groups = k.shape[2]
    per_group = heads // groups
    per_sample = kp.dim() == 4
    prefix_len = kp.shape[-2]
    rows = horizon * per_group
    if attention == "flex":
        if not per_sample:
            kp, vp = (t[None].expand(samples, groups, prefix_len, head_dim) for t in (kp, vp))
        keys = torch.cat([kp, k.transpose(1, 2)], dim=2)  # [K, G, P + H, D]
        values = torch.cat([vp, v.transpose(1, 2)], dim=2)

        def masked(score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor,
                   kv_idx: torch.Tensor) -> torch.Tensor:
            return score + bias[b, kv_idx]  # ``flex_key_bias``: [K, P + H], built once per step

        options = {"BACKEND": "TRITON"} if q.is_cuda else None
        out = flex_attention(q.transpose(1, 2), keys, values, score_mod=masked, enable_gqa=groups != heads,
                             kernel_options=options)
        return out.transpose(1, 2).reshape(samples, horizon, heads * head_dim)
    if per_sample:  # [G, K, P, D] and a bias row per sample
        kp, vp, bias = kp.transpose(0, 1), vp.transpose(0, 1), bias[None, :, None, :]
    if groups == 1:
        qg = q.reshape(1, samples * rows, head_dim)
        ka, va = k.reshape(1, samples, horizon, head_dim), v.reshape(1, samples, horizon, head_dim)
    else:
        qg = q.reshape(samples, horizon, groups, per_group, head_dim).permute(2, 0, 1, 3, 4)
        qg = qg.reshape(groups, samples * rows, head_dim)
        ka, va = k.permute(2, 0, 1, 3), v.permute(2, 0, 1, 3)
    if attention == "joint":
        if not per_sample:
            kp, vp = (t[:, None].expand(groups, samples, prefix_len, head_dim) for t in (kp, vp))
        keys, values = torch.cat([kp, ka], dim=2), torch.cat([vp, va], dim=2)
        full_bias = torch.cat([bias, bias.new_zeros(bias.shape[:-1] + (horizon,))], dim=-1).to(q.dtype)
        full_bias = full_bias.reshape(-1, 1, 1, prefix_len + horizon)
        out = F.scaled_dot_product_attention(qg.reshape(groups, samples, rows, head_dim).transpose(0, 1),
                                             keys.transpose(0, 1), values.transpose(0, 1), attn_mask=full_bias)
        out = out.transpose(0, 1)
    else:
        # Action keys/values are zero-padded to a multiple of 8 rows (masked with -inf) so that every
        # operand of the four GEMMs is 16-byte aligned (else cuBLAS falls back to pre-Hopper kernels);
        # the prefix is padded the same way by the caller (``FastPolicy.prefix_len_padded``).
        scale = head_dim ** -0.5
        padded = horizon + (-horizon) % 8
        if padded != horizon:
            ka = F.pad(ka, (0, 0, 0, padded - horizon))
            va = F.pad(va, (0, 0, 0, padded - horizon))
        action_bias = torch.where(torch.arange(padded, device=q.device) < horizon, 0.0, float("-inf"))
        if per_sample:
            scores_prefix = torch.matmul(qg.reshape(groups, samples, rows, head_dim), kp.transpose(2, 3))
        else:
            scores_prefix = torch.matmul(qg, kp.transpose(1, 2)).reshape(groups, samples, rows, prefix_len)
        scores_action = torch.matmul(qg.reshape(groups, samples, rows, head_dim), ka.transpose(2, 3))
        scores = torch.cat([scores_prefix.float() * scale + bias, scores_action.float() * scale + action_bias], dim=-1)
        p = torch.softmax(scores, dim=-1).to(q.dtype)
        if per_sample:
            out = torch.matmul(p[..., :prefix_len], vp)
        else:
            out = torch.matmul(p[..., :prefix_len].reshape(groups, samples * rows, prefix_len), vp)
        out = torch.baddbmm(out.reshape(groups * samples, rows, head_dim),
                            p[..., prefix_len:].reshape(groups * samples, rows, padded),
                            va.reshape(groups * samples, padded, head_dim))
    if groups == 1:
        return out.reshape(samples, horizon, heads * head_dim)
    out = out.reshape(groups, samples, horizon, per_group, head_dim).permute(1, 2, 0, 3, 4)
    return out.reshape(samples, horizon, heads * head_dim)


def flex_key_bias(bias: torch.Tensor, samples: int, horizon: int) -> torch.Tensor:
    """The 'flex' expert attention's key bias [K, P + H]: the prefix bias ([P] or [K, P]) per sample, then
    zeros for the sample's own action keys. A tensor made outside the compiled layer, so that the
    score function reads a graph input (what FlexAttention's lowering expects of captured tensors)."""
    prefix = bias.reshape(-1, bias.shape[-1]).expand(samples, bias.shape[-1])
    return torch.cat([prefix, prefix.new_zeros((samples, horizon))], dim=-1)


def _expert_layer(h: torch.Tensor, mod: torch.Tensor, wqkv: torch.Tensor, wo: torch.Tensor,
                  wgu: torch.Tensor, wd: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor,
                  bias: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float, heads: int,
                  kv_heads: int, attention: str) -> torch.Tensor:
    """One action-expert layer on h [K, H, W]; ``mod`` [6, W] = (1+scale, shift, gate) x (attn, mlp)."""
    q, k, v = _split_qkv(F.linear(_modulated_norm(h, mod[0], mod[1], eps), wqkv), heads, kv_heads, kp.shape[-1])
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    h = h + mod[2] * F.linear(_expert_attention(q, k, v, kp, vp, bias, attention), wo)
    gate, up = F.linear(_modulated_norm(h, mod[3], mod[4], eps), wgu).chunk(2, dim=-1)
    return h + mod[5] * F.linear(F.gelu(gate, approximate="tanh") * up, wd)


def _expert_head(x: torch.Tensor, t: torch.Tensor, action_scale: torch.Tensor, w_in: torch.Tensor,
                 b_in: torch.Tensor, step_embedding: torch.Tensor, min_time: float) -> torch.Tensor:
    """Preconditioned noisy actions -> expert tokens [K, H, W]; ``t`` [1] float32."""
    tt = t.float().clamp(min=min_time)
    pre = x.float() * torch.rsqrt(tt * tt + ((1.0 - tt) * action_scale) ** 2)
    return F.linear(pre.to(w_in.dtype), w_in, b_in) + step_embedding


def _expert_tail(h: torch.Tensor, x: torch.Tensor, t: torch.Tensor, mod: torch.Tensor, w_out: torch.Tensor,
                 b_out: torch.Tensor, action_scale: torch.Tensor, eps: float, min_time: float) -> torch.Tensor:
    """Final adaRMS norm, x0 head and the flow velocity ``(x - x0) / t`` (float32 [K, H, D])."""
    clean = F.linear(_modulated_norm(h, mod[0], mod[1], eps), w_out, b_out).float() * action_scale
    return (x.float() - clean) / t.float().clamp(min=min_time)


def _vit_block(x: torch.Tensor, n1w: torch.Tensor, n1b: torch.Tensor, wqkv: torch.Tensor, bqkv: torch.Tensor,
               wp: torch.Tensor, bp: torch.Tensor, n2w: torch.Tensor, n2b: torch.Tensor, w1: torch.Tensor,
               b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, heads: int, eps: float) -> torch.Tensor:
    """``ViTBlock.forward`` with its weights as arguments (one compiled function for every block)."""
    batch, length, width = x.shape
    qkv = F.linear(F.layer_norm(x, (width,), n1w, n1b, eps), wqkv, bqkv).reshape(batch, length, 3, heads, width // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    x = x + F.linear(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, width), wp, bp)
    h = F.gelu(F.linear(F.layer_norm(x, (width,), n2w, n2b, eps), w1, b1), approximate="tanh")
    return x + F.linear(h, w2, b2)


def _patch_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A Conv2d whose stride equals its kernel (no padding) as one GEMM over the patches: [N, O, H/kh, W/kw]."""
    n, c, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    gh, gw = height // kh, width // kw
    patches = x.reshape(n, c, gh, kh, gw, kw).permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * kh * kw)
    out = F.linear(patches, weight.reshape(out_channels, c * kh * kw), bias)
    return out.transpose(1, 2).reshape(n, out_channels, gh, gw)


def _is_patch_conv(conv: Any) -> bool:
    return (isinstance(conv, torch.nn.Conv2d) and tuple(conv.stride) == tuple(conv.kernel_size)
            and conv.padding in ((0, 0), "valid") and tuple(conv.dilation) == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


_COMPILED: Dict[Any, Any] = {}


def _compiled(fn: Callable[..., Any], online_softmax: bool = True) -> Callable[..., Any]:
    """One process-wide ``torch.compile`` wrapper per function (and setting), so every backend in the
    process replays the same generated kernels (graph == eager and pipelined == sequential stay
    bitwise). ``online_softmax`` False: Inductor's softmax as a plain (persistent) reduction, not its one-pass
    online form, for rows that fit in registers (the expert's ~950 keys)."""
    key = (fn, online_softmax)
    if key not in _COMPILED:
        # No split (two-pass) reductions: the rows here (softmax over ~900 keys for 1600 queries, norms
        # over the width) are enough to fill the GPU, and split reductions cost extra kernels.
        options = {"split_reductions": False, **({} if online_softmax else {"online_softmax": False})}
        _COMPILED[key] = torch.compile(fn, dynamic=False, fullgraph=True, options=options)
    return _COMPILED[key]


# First linear of a fused group -> the fused tensor its group's weights are row views of (weak keys:
# the cache does not keep a policy alive and sets no attribute on its modules).
_FUSED: "weakref.WeakKeyDictionary[nn.Linear, torch.Tensor]" = weakref.WeakKeyDictionary()


def _fuse_rows(linears: List[nn.Linear]) -> torch.Tensor:
    """Concatenate the weights of ``linears`` (no bias) row-wise into one tensor and make each
    module's weight a row view of it: one GEMM instead of several, no extra memory."""
    fused = _FUSED.get(linears[0])
    if fused is not None:
        offset, reusable = 0, True
        for linear in linears:
            rows = linear.weight.shape[0]
            reusable &= (fused.dtype == linear.weight.dtype and fused.device == linear.weight.device
                         and offset + rows <= fused.shape[0] and linear.weight.data_ptr() == fused[offset].data_ptr())
            offset += rows
        if reusable and offset == fused.shape[0]:
            return fused
    with torch.no_grad():
        fused = torch.cat([linear.weight.detach() for linear in linears], dim=0).contiguous()
        offset = 0
        for linear in linears:
            rows = linear.weight.shape[0]
            linear.weight.data = fused[offset:offset + rows]
            offset += rows
    _FUSED[linears[0]] = fused
    return fused


class FastPolicy:
    """The GPU serving arrangement of a ``VlaPolicy`` (module docstring).

    ``install()`` routes this policy instance's backbone, ViT blocks and patch convolutions through
    the fused functions by ``VisionEngine``'s hooks (embeddings stay the model's own code);
    ``uninstall()`` restores its own modules. ``velocity`` is the expert's flow velocity from a
    modulation-table row and a shared or per-sample prefix.
    """

    def __init__(self, policy: VlaPolicy, compile: bool = False, attention: str = "split",
                 prefix_attention: str = "manual", online_softmax: bool = True) -> None:
        if attention not in ATTENTIONS:
            raise ValueError(f"attention: expected one of {ATTENTIONS}, received {attention!r}")
        if prefix_attention not in PREFIX_ATTENTIONS:
            raise ValueError(f"prefix_attention: expected one of {PREFIX_ATTENTIONS}, received {prefix_attention!r}")
        self.prefix_attention = prefix_attention
        self.policy = policy
        cfg = policy.cfg
        b = cfg.backbone
        self.cfg = cfg
        self.heads, self.kv_heads, self.head_dim = b.num_heads, b.num_kv_heads, b.head_dim
        self.attention = attention
        self.compile = compile
        self.online_softmax = online_softmax or not compile
        ve, ex = policy.vision_engine, policy.action_expert
        self.dtype = ex.action_in.weight.dtype
        device = ex.action_in.weight.device
        self.backbone_weights = []
        for layer in ve.layers:
            a, m = layer.attn, layer.mlp
            self.backbone_weights.append((layer.input_norm.weight, _fuse_rows([a.q_proj, a.k_proj, a.v_proj]), a.o_proj.weight,
                                          layer.mlp_norm.weight, _fuse_rows([m.gate_proj, m.up_proj]), m.down_proj.weight))
        self.backbone_eps = ve.layers[0].input_norm.eps
        self.expert_weights = []
        for layer in ex.layers:
            a, m = layer.attn, layer.mlp
            self.expert_weights.append((_fuse_rows([a.q_proj, a.k_proj, a.v_proj]), a.o_proj.weight,
                                        _fuse_rows([m.gate_proj, m.up_proj]), m.down_proj.weight))
        self.expert_eps = ex.layers[0].input_norm.eps
        self.mod_rows = 6 * len(ex.layers) + 2
        # Prefix keys/values are served padded to a multiple of 16 (masked), for aligned GEMMs.
        self.prefix_len_padded = cfg.prefix_len + (-cfg.prefix_len) % 16
        self.patch_convs = [conv for conv in ve.patch_convolutions() if _is_patch_conv(conv)]
        self._patch_conv_ids = {id(conv) for conv in self.patch_convs}
        with torch.no_grad():
            cos, sin = rope_tables(torch.arange(cfg.prefix_len, device=device), b.head_dim, self.dtype)
            self.prefix_rope = (cos[:, None, :], sin[:, None, :])
            cos, sin = rope_tables(
                torch.arange(cfg.prefix_len, cfg.prefix_len + cfg.action_horizon, device=device), b.head_dim, self.dtype)
            self.action_rope = (cos[:, None, :], sin[:, None, :])
            # ``encode_views``: the full prefix, then the camera-0 view's tokens at their own positions.
            self.view_positions = PrefixTrim(1, True, cfg.text_max_len).positions(cfg).to(device)
            positions = torch.cat([torch.arange(cfg.prefix_len, device=device), self.view_positions])
            cos, sin = rope_tables(positions, b.head_dim, self.dtype)
            self.views_rope = (cos[:, None, :], sin[:, None, :])
            segment = (torch.arange(len(positions), device=device) >= cfg.prefix_len)
            self.same_view = segment[:, None] == segment[None, :]
        wrap = (lambda fn: _compiled(fn, self.online_softmax)) if compile else (lambda fn: fn)
        self._backbone_layer, self._backbone_kv = wrap(_backbone_layer), wrap(_backbone_kv)
        self._expert_layer, self._expert_head, self._expert_tail = wrap(_expert_layer), wrap(_expert_head), \
            wrap(_expert_tail)
        self._vit_block = wrap(_vit_block)

    # -- stage 1 --------------------------------------------------------------------------------
    def backbone(self, x: torch.Tensor, prefix_mask: torch.Tensor) -> torch.Tensor:
        """The ``VisionEngine.use_backbone`` hook: prefix_kv [B, L, 2, G, P, D] from the embedded
        prefix x [B, P, W] and its mask [B, P]."""
        cos, sin = self.prefix_rope
        if x.shape[1] != cos.shape[0]:
            raise ValueError(f"prefix length {x.shape[1]} != {cos.shape[0]}")
        return self._backbone_pass(x, key_bias(prefix_mask, x.dtype), cos, sin)

    def encode_views(self, images: torch.Tensor, camera_mask: torch.Tensor, lidar_range: torch.Tensor,
                     lidar_mask: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                     state: torch.Tensor) -> Any:
        """Both camera views of one observation in one backbone pass: (prefix_kv [2, L, 2, G, P, D],
        prefix_mask [2, P]) for row 0 (every camera) and row 1 (camera 0 alone), from row 0's inputs.

        The vision engine on the two rows would run the ViT on camera 0 twice and the backbone over
        row 1's masked camera tokens. Here the ViT runs once per camera, and row 1's tokens (camera 0,
        LiDAR, text, state, at their own positions) follow row 0's in one sequence whose attention is
        block-diagonal: one GEMM per projection over both rows. A masked key adds exactly zero, so row
        1's keys/values equal the vision engine's at every position its mask keeps; the positions it
        masks stay zero."""
        x, mask, _ = self.policy.vision_engine.embed(images[:1], camera_mask[:1], lidar_range[:1], lidar_mask[:1],
                                                     text_tokens[:1], text_mask[:1], state[:1])
        full = x.shape[1]
        keep = self.view_positions
        view_mask = mask.index_select(1, keep)
        valid = torch.cat([mask, view_mask], dim=1)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        masked = torch.full((), MASK_BIAS, dtype=x.dtype, device=x.device)
        bias = torch.where(self.same_view & valid[:, None, :], zero, masked)[:, None]
        kv = self._backbone_pass(torch.cat([x, x.index_select(1, keep)], dim=1), bias, *self.views_rope)
        view_kv = torch.zeros_like(kv[..., :full, :]).index_copy_(kv.dim() - 2, keep, kv[..., full:, :])
        view_mask_full = torch.zeros_like(mask).index_copy_(1, keep, view_mask)
        return torch.cat([kv[..., :full, :], view_kv]), torch.cat([mask, view_mask_full])

    def _backbone_pass(self, x: torch.Tensor, bias: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Every layer's rotated keys/values [B, L, 2, G, T, D] of the tokens x [B, T, W] under an
        additive ``bias`` (per key [B, 1, 1, T], or per query and key [B, 1, T, T])."""
        layer_kv = []
        for w_in, wqkv, wo, w_post, wgu, wd in self.backbone_weights[:-1]:
            x, k, v = self._backbone_layer(x, w_in, wqkv, wo, w_post, wgu, wd, cos, sin, bias, self.backbone_eps,
                                           self.heads, self.kv_heads, self.prefix_attention == "manual", MASK_BIAS)
            layer_kv.append(torch.stack([k.transpose(1, 2), v.transpose(1, 2)], dim=1))
        w_in, wqkv = self.backbone_weights[-1][0], self.backbone_weights[-1][1]
        k, v = self._backbone_kv(x, w_in, wqkv[self.heads * self.head_dim:], cos, sin, self.backbone_eps, self.kv_heads)
        layer_kv.append(torch.stack([k.transpose(1, 2), v.transpose(1, 2)], dim=1))
        return torch.stack(layer_kv, dim=1)

    def vit_block(self, block: ViTBlock, x: torch.Tensor) -> torch.Tensor:
        """The ``use_patch_kernels`` ViT hook: ``block(x)`` through the one (compiled) block function."""
        return self._vit_block(x, block.norm1.weight, block.norm1.bias, block.qkv.weight, block.qkv.bias,
                               block.proj.weight, block.proj.bias, block.norm2.weight, block.norm2.bias,
                               block.fc1.weight, block.fc1.bias, block.fc2.weight, block.fc2.bias,
                               block.num_heads, block.norm1.eps)

    def patch_conv(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """The ``use_patch_kernels`` convolution hook: ``conv(x)`` as one GEMM where it is a patch
        convolution (stride == kernel, no padding), else the module itself."""
        if id(conv) in self._patch_conv_ids:
            return _patch_conv(x, conv.weight, conv.bias)
        return conv(x)

    def install(self) -> None:
        """Route this policy instance's stage 1 through the fast functions (the class and the other
        policies are untouched)."""
        engine = self.policy.vision_engine
        engine.use_backbone(self.backbone)
        engine.use_patch_kernels(self.vit_block, self.patch_conv)

    def uninstall(self) -> None:
        """Restore the policy's own backbone, ViT blocks and patch convolutions."""
        engine = self.policy.vision_engine
        engine.use_backbone(None)
        engine.use_patch_kernels(None, None)

    @contextmanager
    def installed(self) -> Iterator[None]:
        """``install`` for the duration of a block (a check against the policy as written), then
        ``uninstall``, also when the block raises."""
        self.install()
        try:
            yield
        finally:
            self.uninstall()

    def pad_prefix(self, prefix_kv: torch.Tensor, mask: torch.Tensor) -> Any:
        """(keys/values [..., L, 2, G, P_padded, D] zero-padded, bias [..., P_padded] float32) from one
        request's prefix_kv [L, 2, G, P, D] and mask [P], or the per-sample [K, L, 2, G, P, D] and
        [K, P]; the serving path writes the same into its slot buffers."""
        pad = self.prefix_len_padded - prefix_kv.shape[-2]
        padding = torch.full((*mask.shape[:-1], pad), MASK_BIAS, device=mask.device)
        return F.pad(prefix_kv, (0, 0, 0, pad)), torch.cat([self.mask_bias(mask), padding], dim=-1)

    # -- stage 2 --------------------------------------------------------------------------------
    def modulation_table(self, times: torch.Tensor) -> torch.Tensor:
        """[S, 6 * layers + 2, W]: per flow time, (1+scale, shift, gate) of both adaRMS norms of every
        layer, then (1+scale, shift) of the final norm, exactly as the expert computes them."""
        with torch.no_grad():
            return self._modulation_table(times)

    def _modulation_table(self, times: torch.Tensor) -> torch.Tensor:
        ex = self.policy.action_expert
        width = ex.action_in.weight.shape[0]
        emb = time_embedding(times, width).to(self.dtype)
        cond = F.silu(ex.time_mlp_out(F.silu(ex.time_mlp_in(emb))))
        parts = []
        for layer in ex.layers:
            for norm in (layer.input_norm, layer.mlp_norm):
                scale, shift, gate = norm.modulation(cond)[:, None, :].chunk(3, dim=-1)
                parts += [1.0 + scale, shift, gate]
        scale, shift = ex.final_norm.modulation(cond)[:, None, :].chunk(2, dim=-1)
        parts += [1.0 + scale, shift]
        return torch.cat(parts, dim=1)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, mods: torch.Tensor, prefix_kv: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
        """Flow velocity float32 [K, H, D] at (x [K, H, D] float32, t [1]); ``mods`` is one row of
        ``modulation_table`` [6 L + 2, W]; ``prefix_kv`` [L, 2, G, P', D] with ``bias`` [P'] float32
        (shared by the K samples) or [K, L, 2, G, P', D] with [K, P'] (per sample), P' >= P
        (``pad_prefix``: padded keys are masked)."""
        layer_kv = prefix_kv.transpose(0, 1) if prefix_kv.dim() == 6 else prefix_kv  # [L, (K,) 2, ...]
        if self.attention == "flex":
            bias = flex_key_bias(bias, x.shape[0], x.shape[1])
        ex = self.policy.action_expert
        cos, sin = self.action_rope
        h = self._expert_head(x, t, ex.action_scale, ex.action_in.weight, ex.action_in.bias, ex.step_embedding,
                              MIN_FLOW_TIME)
        for index, (wqkv, wo, wgu, wd) in enumerate(self.expert_weights):
            kp, vp = layer_kv[index].unbind(-4)
            h = self._expert_layer(h, mods[6 * index:6 * index + 6], wqkv, wo, wgu, wd, kp, vp, bias, cos, sin,
                                   self.expert_eps, self.heads, self.kv_heads, self.attention)
        return self._expert_tail(h, x, t, mods[self.mod_rows - 2:], ex.action_out.weight, ex.action_out.bias,
                                 ex.action_scale, self.expert_eps, MIN_FLOW_TIME)

    def mask_bias(self, mask: torch.Tensor) -> torch.Tensor:
        """Additive float32 key bias from a bool mask: 0 where True, ``MASK_BIAS`` where False."""
        return torch.where(mask, 0.0, MASK_BIAS).float()


__all__ = ["ATTENTIONS", "PREFIX_ATTENTIONS", "FastPolicy"]
