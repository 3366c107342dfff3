"""PyTorch backend: the training-side ``VlaPolicy`` served directly.

* CPU, fp32: the reference for parity with ONNX Runtime (same Euler loop, ``Backend.denoise``).
* CUDA, bf16 (or fp16/fp32): static device buffers and CUDA graphs. Stage 1 replays one graph for
  the whole prefix pass on a normal-priority stream and copies the prefix keys/values once into one
  of two slot buffers (shared by the K samples, never repeated K times); stage 2 replays, ``steps``
  times, a graph of one denoising step (expert forward + Euler update, flow time and time
  conditioning read from device tables through a device step counter) on the highest-priority
  stream. Each slot has its own step graph, so the expert reads its prefix in place, and the loop
  never synchronises with the host: the only wait is the final copy of the chunk back to pinned
  memory (the first request with a new ``steps`` value also uploads and caches its modulation
  table, a synchronous copy). By default both graphs run ``FastPolicy`` (below): the policy's own
  parameters in a GPU arrangement (fused GEMMs, time-conditioning table, shared-prefix attention
  over aligned padded keys, patch convolutions as GEMMs) with ``torch.compile`` fusing the
  elementwise work; it is checked against the policy as written when it is prepared and falls back
  to it (or to eager on a compile error). docs/benchmarks.md has the measurements.

The policy comes from the manifest's ``weights`` file (SHA-256 checked), or, for timing runs of
the full-size preset without a trained checkpoint, from ``TorchBackend.with_random_weights``.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from vla_inference.runtime.backends.base import Backend, BackendUnavailableError
from vla_inference.spec.config import VlaConfig
from vla_inference.spec.engine_spec import ACTION_EXPERT, VISION, check_inputs
from vla_inference.spec.flow import flow_schedule
from vla_inference.spec.manifest import MANIFEST_NAME, Manifest, ModelDirError, sha256_of

try:
    import torch
    import torch.nn.functional as F
except ImportError as exc:
    torch = None
    _IMPORT_ERROR: Optional[ImportError] = exc
else:
    _IMPORT_ERROR = None

LOG = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
MAX_STEPS = 256  # capacity of the device flow schedule the step graphs read from
GRAPH_WARMUP_ITERS = 3
DEFAULT_COMPILE = True  # torch.compile the fast path's layer functions on CUDA (falls back to eager on error)
SELF_CHECK_MIN_COSINE = 0.99  # fast path vs the policy as written, at prepare; below it, serve the policy
MOD_TABLE_CACHE = 16  # modulation tables kept per steps value


def _torch_dtype(precision: str) -> "torch.dtype":
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _numpy_to_torch_dtype(name: str) -> "torch.dtype":
    return {"float32": torch.float32, "int64": torch.int64, "bool": torch.bool}[name]


class _DeviceSlot:
    """One request's prefix on the device: keys/values ``padded_kv`` [(K,) layers, 2, kv_heads,
    padded_len, head_dim] (``prefix_kv`` is its first prefix_len positions; the rest stay zero), the
    bool mask [(K,) prefix_len], the additive float32 ``bias`` [(K,) padded_len] (MASK_BIAS on the
    padding), and the event that says stage 1 filled them. Without camera views one prefix is shared
    by the K samples (never repeated K times); with them each sample has its view's row (leading K)."""

    def __init__(self, kv: "torch.Tensor", mask: "torch.Tensor", padded_len: int, mask_bias: float) -> None:
        prefix_len = kv.shape[-2]
        shape = (*kv.shape[:-2], padded_len, kv.shape[-1])
        self.padded_kv = torch.zeros(shape, dtype=kv.dtype, device=kv.device)
        self.prefix_kv = self.padded_kv[..., :prefix_len, :]
        self.prefix_mask = torch.ones(mask.shape, dtype=mask.dtype, device=mask.device)
        self.bias = torch.full((*mask.shape[:-1], padded_len), mask_bias, dtype=torch.float32, device=mask.device)
        self.per_sample = kv.dim() == 6
        self.ready = torch.cuda.Event()


# -- GPU fast path -----------------------------------------------------------------------------
# The same functions as ``VlaPolicy`` (same parameters, same math), rearranged for a GPU serving one
# observation with K samples. They are plain tensor functions, so they run (and are tested) on the
# CPU in fp32 as well, and ``torch.compile`` can fuse their elementwise work (norms, RoPE, gating,
# GeGLU, softmax) around the cuBLAS GEMMs when ``compile`` is on.
#
# * q/k/v and gate/up projections are single GEMMs: the module weights become row views of one
#   fused tensor per layer (names, shapes and values unchanged, no extra memory).
# * The time conditioning of the action expert (time MLP and the 37 per-layer adaRMS modulation
#   GEMMs) depends only on the flow time, so it is computed once per steps value into a table; a
#   step reads its row.
# * Expert attention: the prefix keys/values are shared by the K samples and never concatenated
#   with the action keys. Scores against the prefix are one GEMM over all K * horizon * heads
#   queries, scores against the sample's own action keys a batched GEMM; one softmax (float32) over
#   both, then two GEMMs for the output. Queries stay in [sample, token, head] order (rows of
#   attention are independent), so no transposes.


def _rms(x: "torch.Tensor", eps: float) -> "torch.Tensor":
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


def _weighted_norm(x: "torch.Tensor", weight: "torch.Tensor", eps: float) -> "torch.Tensor":
    """Gemma RMSNorm ``x / rms(x) * (1 + weight)`` in float32, rounded once."""
    return (_rms(x, eps) * (1.0 + weight.float())).to(x.dtype)


def _modulated_norm(x: "torch.Tensor", one_plus_scale: "torch.Tensor", shift: "torch.Tensor",
                    eps: float) -> "torch.Tensor":
    """pi0.5 adaptive RMSNorm with precomputed (1 + scale) and shift, in float32, rounded once."""
    return (_rms(x, eps) * one_plus_scale.float() + shift.float()).to(x.dtype)


def _rope(x: "torch.Tensor", cos: "torch.Tensor", sin: "torch.Tensor") -> "torch.Tensor":
    """Rotate-half RoPE on [..., L, heads, D] with cos/sin [L, 1, D]."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def _split_qkv(qkv: "torch.Tensor", heads: int, kv_heads: int, head_dim: int) -> Any:
    """[B, L, (heads + 2 kv_heads) D] -> q [B, L, heads, D], k/v [B, L, kv_heads, D] (views)."""
    batch, length, _ = qkv.shape
    q_end, k_end = heads * head_dim, (heads + kv_heads) * head_dim
    q = qkv[..., :q_end].view(batch, length, heads, head_dim)
    k = qkv[..., q_end:k_end].view(batch, length, kv_heads, head_dim)
    v = qkv[..., k_end:].view(batch, length, kv_heads, head_dim)
    return q, k, v


def _prefix_attention(q: "torch.Tensor", k: "torch.Tensor", v: "torch.Tensor", bias: "torch.Tensor",
                      manual: bool = False, mask_bias: float = -30000.0) -> "torch.Tensor":
    """Grouped-query attention inside the prefix: q [B, P, H, D], k/v [B, P, G, D], bias [B, 1, 1, P]
    -> [B, P, H * D]. The H / G query heads of a group are folded into the query axis.

    ``manual``: two GEMMs and a float32 softmax over keys zero-padded to a multiple of 16 (masked),
    instead of SDPA with a bias (which on an H100 runs one key/value head with ~55 query tiles)."""
    batch, length, heads, head_dim = q.shape
    groups = k.shape[2]
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
        scores = torch.matmul(folded, keys.transpose(2, 3)).float() * head_dim ** -0.5 + bias.float()
        out = torch.matmul(torch.softmax(scores, dim=-1).to(q.dtype), values)
        out = out.reshape(batch, groups, length, per_group, head_dim).permute(0, 2, 1, 3, 4)
        return out.reshape(batch, length, heads * head_dim)
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


def _backbone_layer(x: "torch.Tensor", w_in: "torch.Tensor", wqkv: "torch.Tensor", wo: "torch.Tensor",
                    w_post: "torch.Tensor", wgu: "torch.Tensor", wd: "torch.Tensor", cos: "torch.Tensor",
                    sin: "torch.Tensor", bias: "torch.Tensor", eps: float, heads: int, kv_heads: int,
                    manual_attention: bool = False, mask_bias: float = -30000.0) -> Any:
    """One Gemma prefix layer: returns (x after the layer, rotated k, v [B, P, G, D])."""
    h = _weighted_norm(x, w_in, eps)
    q, k, v = _split_qkv(F.linear(h, wqkv), heads, kv_heads, cos.shape[-1])
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    x = x + F.linear(_prefix_attention(q, k, v, bias, manual_attention, mask_bias), wo)
    gate, up = F.linear(_weighted_norm(x, w_post, eps), wgu).chunk(2, dim=-1)
    return x + F.linear(F.gelu(gate, approximate="tanh") * up, wd), k, v


def _backbone_kv(x: "torch.Tensor", w_in: "torch.Tensor", wkv: "torch.Tensor", cos: "torch.Tensor",
                 sin: "torch.Tensor", eps: float, kv_heads: int) -> Any:
    """The last prefix layer: only its keys/values are used (rotated k, v [B, P, G, D])."""
    batch, length, _ = x.shape
    kv = F.linear(_weighted_norm(x, w_in, eps), wkv)
    head_dim = cos.shape[-1]
    k = kv[..., : kv_heads * head_dim].view(batch, length, kv_heads, head_dim)
    v = kv[..., kv_heads * head_dim:].view(batch, length, kv_heads, head_dim)
    return _rope(k, cos, sin), v


def _expert_attention(q: "torch.Tensor", k: "torch.Tensor", v: "torch.Tensor", kp: "torch.Tensor",
                      vp: "torch.Tensor", bias: "torch.Tensor", joint: bool) -> "torch.Tensor":
    """Action tokens attend to the prefix (masked by ``bias``) and to their own sample's tokens.

    q [K, H, heads, D]; k/v [K, H, G, D]; kp/vp [G, P, D] with bias [P] (one prefix shared by the K
    samples) or kp/vp [K, G, P, D] with bias [K, P] (each sample its own, for camera views); bias
    float32 (0 or MASK_BIAS). Returns [K, H, heads * D]. ``joint`` runs the reference layout instead
    (prefix repeated K times and concatenated with the action keys, one SDPA call), kept for A/B.
    A shared prefix is one GEMM over all K * H * heads queries; per-sample prefixes a batched GEMM.
    """
    samples, horizon, heads, head_dim = q.shape
    groups = k.shape[2]
    per_group = heads // groups
    per_sample = kp.dim() == 4
    prefix_len = kp.shape[-2]
    rows = horizon * per_group
    if per_sample:  # [G, K, P, D] and a bias row per sample
        kp, vp, bias = kp.transpose(0, 1), vp.transpose(0, 1), bias[None, :, None, :]
    if groups == 1:
        qg = q.reshape(1, samples * rows, head_dim)
        ka, va = k.reshape(1, samples, horizon, head_dim), v.reshape(1, samples, horizon, head_dim)
    else:
        qg = q.reshape(samples, horizon, groups, per_group, head_dim).permute(2, 0, 1, 3, 4)
        qg = qg.reshape(groups, samples * rows, head_dim)
        ka, va = k.permute(2, 0, 1, 3), v.permute(2, 0, 1, 3)
    if joint:
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


def _expert_layer(h: "torch.Tensor", mod: "torch.Tensor", wqkv: "torch.Tensor", wo: "torch.Tensor",
                  wgu: "torch.Tensor", wd: "torch.Tensor", kp: "torch.Tensor", vp: "torch.Tensor",
                  bias: "torch.Tensor", cos: "torch.Tensor", sin: "torch.Tensor", eps: float, heads: int,
                  kv_heads: int, joint: bool) -> "torch.Tensor":
    """One action-expert layer on h [K, H, W]; ``mod`` [6, W] = (1+scale, shift, gate) x (attn, mlp)."""
    q, k, v = _split_qkv(F.linear(_modulated_norm(h, mod[0], mod[1], eps), wqkv), heads, kv_heads, kp.shape[-1])
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    h = h + mod[2] * F.linear(_expert_attention(q, k, v, kp, vp, bias, joint), wo)
    gate, up = F.linear(_modulated_norm(h, mod[3], mod[4], eps), wgu).chunk(2, dim=-1)
    return h + mod[5] * F.linear(F.gelu(gate, approximate="tanh") * up, wd)


def _expert_head(x: "torch.Tensor", t: "torch.Tensor", action_scale: "torch.Tensor", w_in: "torch.Tensor",
                 b_in: "torch.Tensor", step_embedding: "torch.Tensor", min_time: float) -> "torch.Tensor":
    """Preconditioned noisy actions -> expert tokens [K, H, W]; ``t`` [1] float32."""
    tt = t.float().clamp(min=min_time)
    pre = x.float() * torch.rsqrt(tt * tt + ((1.0 - tt) * action_scale) ** 2)
    return F.linear(pre.to(w_in.dtype), w_in, b_in) + step_embedding


def _expert_tail(h: "torch.Tensor", x: "torch.Tensor", t: "torch.Tensor", mod: "torch.Tensor", w_out: "torch.Tensor",
                 b_out: "torch.Tensor", action_scale: "torch.Tensor", eps: float, min_time: float) -> "torch.Tensor":
    """Final adaRMS norm, x0 head and the flow velocity ``(x - x0) / t`` (float32 [K, H, D])."""
    clean = F.linear(_modulated_norm(h, mod[0], mod[1], eps), w_out, b_out).float() * action_scale
    return (x.float() - clean) / t.float().clamp(min=min_time)


def _vit_block(x: "torch.Tensor", n1w: "torch.Tensor", n1b: "torch.Tensor", wqkv: "torch.Tensor", bqkv: "torch.Tensor",
               wp: "torch.Tensor", bp: "torch.Tensor", n2w: "torch.Tensor", n2b: "torch.Tensor", w1: "torch.Tensor",
               b1: "torch.Tensor", w2: "torch.Tensor", b2: "torch.Tensor", heads: int, eps: float) -> "torch.Tensor":
    """``ViTBlock.forward`` with its weights as arguments (one compiled function for every block)."""
    batch, length, width = x.shape
    qkv = F.linear(F.layer_norm(x, (width,), n1w, n1b, eps), wqkv, bqkv).reshape(batch, length, 3, heads, width // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    x = x + F.linear(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, width), wp, bp)
    h = F.gelu(F.linear(F.layer_norm(x, (width,), n2w, n2b, eps), w1, b1), approximate="tanh")
    return x + F.linear(h, w2, b2)


def _patch_conv(x: "torch.Tensor", weight: "torch.Tensor", bias: Optional["torch.Tensor"]) -> "torch.Tensor":
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


def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One process-wide ``torch.compile`` wrapper per function, so every backend in the process
    replays the same generated kernels (graph == eager and pipelined == sequential stay bitwise)."""
    if fn not in _COMPILED:
        # No split (two-pass) reductions: the rows here (softmax over ~900 keys for 1600 queries, norms
        # over the width) are enough to fill the GPU, and split reductions cost extra kernels.
        _COMPILED[fn] = torch.compile(fn, dynamic=False, fullgraph=True, options={"split_reductions": False})
    return _COMPILED[fn]


def _fuse_rows(linears: List[Any]) -> "torch.Tensor":
    """Concatenate the weights of ``linears`` (no bias) row-wise into one tensor and make each
    module's weight a row view of it: one GEMM instead of several, no extra memory."""
    fused = getattr(linears[0], "_vla_fused_rows", None)
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
    object.__setattr__(linears[0], "_vla_fused_rows", fused)
    return fused


class FastPolicy:
    """The GPU serving arrangement of a ``VlaPolicy`` (see the comment above ``_rms``).

    ``install()`` routes ``VisionEngine._backbone`` of this policy instance through the fused
    layers (embeddings stay the model's own code); ``uninstall()`` restores it. ``velocity`` is the
    expert's flow velocity from a modulation-table row and a shared prefix.
    """

    def __init__(self, policy: Any, compile: bool = False, attention: str = "split",
                 prefix_attention: str = "manual") -> None:
        from vla_inference.model import policy as policy_module

        if attention not in ("split", "joint"):
            raise ValueError(f"attention: expected 'split' or 'joint', received {attention!r}")
        if prefix_attention not in ("manual", "sdpa"):
            raise ValueError(f"prefix_attention: expected 'manual' or 'sdpa', received {prefix_attention!r}")
        self.prefix_attention = prefix_attention
        self._pm = policy_module
        self.policy = policy
        cfg = policy.cfg
        b = cfg.backbone
        self.cfg = cfg
        self.heads, self.kv_heads, self.head_dim = b.num_heads, b.num_kv_heads, b.head_dim
        self.joint = attention == "joint"
        self.compile = compile
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
        self.vit_blocks = list(ve.vit.blocks)
        self.patch_convs = [conv for conv in (ve.vit.patch_embed, ve.lidar_column, ve.lidar_embed)
                            if _is_patch_conv(conv)]
        with torch.no_grad():
            cos, sin = policy_module.rope_tables(torch.arange(cfg.prefix_len, device=device), b.head_dim, self.dtype)
            self.prefix_rope = (cos[:, None, :], sin[:, None, :])
            cos, sin = policy_module.rope_tables(
                torch.arange(cfg.prefix_len, cfg.prefix_len + cfg.action_horizon, device=device), b.head_dim, self.dtype)
            self.action_rope = (cos[:, None, :], sin[:, None, :])
        wrap = _compiled if compile else (lambda fn: fn)
        self._backbone_layer, self._backbone_kv = wrap(_backbone_layer), wrap(_backbone_kv)
        self._expert_layer, self._expert_head, self._expert_tail = wrap(_expert_layer), wrap(_expert_head), \
            wrap(_expert_tail)
        self._vit_block = wrap(_vit_block)

    # -- stage 1 --------------------------------------------------------------------------------
    def backbone(self, x: "torch.Tensor", prefix_mask: "torch.Tensor") -> Any:
        """Drop-in for ``VisionEngine._backbone``: (prefix_kv [B, L, 2, G, P, D], x). Serving uses only
        prefix_kv (``VisionEngine.forward`` drops the second value, a training intermediate)."""
        cos, sin = self.prefix_rope
        if x.shape[1] != cos.shape[0]:
            raise ValueError(f"prefix length {x.shape[1]} != {cos.shape[0]}")
        bias = self._pm.key_bias(prefix_mask, x.dtype)
        layer_kv = []
        for w_in, wqkv, wo, w_post, wgu, wd in self.backbone_weights[:-1]:
            x, k, v = self._backbone_layer(x, w_in, wqkv, wo, w_post, wgu, wd, cos, sin, bias, self.backbone_eps,
                                           self.heads, self.kv_heads, self.prefix_attention == "manual",
                                           self._pm.MASK_BIAS)
            layer_kv.append(torch.stack([k.transpose(1, 2), v.transpose(1, 2)], dim=1))
        w_in, wqkv = self.backbone_weights[-1][0], self.backbone_weights[-1][1]
        k, v = self._backbone_kv(x, w_in, wqkv[self.heads * self.head_dim:], cos, sin, self.backbone_eps, self.kv_heads)
        layer_kv.append(torch.stack([k.transpose(1, 2), v.transpose(1, 2)], dim=1))
        return torch.stack(layer_kv, dim=1), x

    def _vit_forward(self, block: Any) -> Callable[["torch.Tensor"], "torch.Tensor"]:
        def forward(x: "torch.Tensor") -> "torch.Tensor":
            return self._vit_block(x, block.norm1.weight, block.norm1.bias, block.qkv.weight, block.qkv.bias,
                                   block.proj.weight, block.proj.bias, block.norm2.weight, block.norm2.bias,
                                   block.fc1.weight, block.fc1.bias, block.fc2.weight, block.fc2.bias,
                                   block.num_heads, block.norm1.eps)
        return forward

    def install(self) -> None:
        """Route this policy instance's backbone, ViT blocks and patch convolutions through the fast
        functions (instance attributes; the classes and the other policies are untouched)."""
        object.__setattr__(self.policy.vision_engine, "_backbone", self.backbone)
        for block in self.vit_blocks:
            object.__setattr__(block, "forward", self._vit_forward(block))
        for conv in self.patch_convs:
            object.__setattr__(conv, "forward", lambda x, conv=conv: _patch_conv(x, conv.weight, conv.bias))

    def uninstall(self) -> None:
        self.policy.vision_engine.__dict__.pop("_backbone", None)
        for module in self.vit_blocks + self.patch_convs:
            module.__dict__.pop("forward", None)

    def pad_prefix(self, prefix_kv: "torch.Tensor", mask: "torch.Tensor") -> Any:
        """(keys/values [..., L, 2, G, P_padded, D] zero-padded, bias [..., P_padded] float32) from one
        request's prefix_kv [L, 2, G, P, D] and mask [P], or the per-sample [K, L, 2, G, P, D] and
        [K, P]; the serving path writes the same into its slot buffers."""
        pad = self.prefix_len_padded - prefix_kv.shape[-2]
        padding = torch.full((*mask.shape[:-1], pad), self._pm.MASK_BIAS, device=mask.device)
        return F.pad(prefix_kv, (0, 0, 0, pad)), torch.cat([self.mask_bias(mask), padding], dim=-1)

    # -- stage 2 --------------------------------------------------------------------------------
    def modulation_table(self, times: "torch.Tensor") -> "torch.Tensor":
        """[S, 6 * layers + 2, W]: per flow time, (1+scale, shift, gate) of both adaRMS norms of every
        layer, then (1+scale, shift) of the final norm, exactly as the expert computes them."""
        with torch.no_grad():
            return self._modulation_table(times)

    def _modulation_table(self, times: "torch.Tensor") -> "torch.Tensor":
        ex = self.policy.action_expert
        width = ex.action_in.weight.shape[0]
        emb = self._pm.time_embedding(times, width).to(self.dtype)
        cond = F.silu(ex.time_mlp_out(F.silu(ex.time_mlp_in(emb))))
        parts = []
        for layer in ex.layers:
            for norm in (layer.input_norm, layer.mlp_norm):
                scale, shift, gate = norm.modulation(cond)[:, None, :].chunk(3, dim=-1)
                parts += [1.0 + scale, shift, gate]
        scale, shift = ex.final_norm.modulation(cond)[:, None, :].chunk(2, dim=-1)
        parts += [1.0 + scale, shift]
        return torch.cat(parts, dim=1)

    def velocity(self, x: "torch.Tensor", t: "torch.Tensor", mods: "torch.Tensor", prefix_kv: "torch.Tensor",
                 bias: "torch.Tensor") -> "torch.Tensor":
        """Flow velocity float32 [K, H, D] at (x [K, H, D] float32, t [1]); ``mods`` is one row of
        ``modulation_table`` [6 L + 2, W]; ``prefix_kv`` [L, 2, G, P', D] with ``bias`` [P'] float32
        (shared by the K samples) or [K, L, 2, G, P', D] with [K, P'] (per sample), P' >= P
        (``pad_prefix``: padded keys are masked)."""
        layer_kv = prefix_kv.transpose(0, 1) if prefix_kv.dim() == 6 else prefix_kv  # [L, (K,) 2, ...]
        ex = self.policy.action_expert
        pm = self._pm
        cos, sin = self.action_rope
        h = self._expert_head(x, t, ex.action_scale, ex.action_in.weight, ex.action_in.bias, ex.step_embedding,
                              pm.MIN_FLOW_TIME)
        for index, (wqkv, wo, wgu, wd) in enumerate(self.expert_weights):
            kp, vp = layer_kv[index].unbind(-4)
            h = self._expert_layer(h, mods[6 * index:6 * index + 6], wqkv, wo, wgu, wd, kp, vp, bias, cos, sin,
                                   self.expert_eps, self.heads, self.kv_heads, self.joint)
        return self._expert_tail(h, x, t, mods[self.mod_rows - 2:], ex.action_out.weight, ex.action_out.bias,
                                 ex.action_scale, self.expert_eps, pm.MIN_FLOW_TIME)

    def mask_bias(self, mask: "torch.Tensor") -> "torch.Tensor":
        return torch.where(mask, 0.0, self._pm.MASK_BIAS).float()


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


class TorchBackend(Backend):
    """Runs ``VlaPolicy`` on the CPU (fp32) or a CUDA GPU (bf16 by default there)."""

    name = "torch"

    def __init__(
        self,
        manifest: Manifest,
        precision: Optional[str] = None,
        device: str = "cpu",
        intra_op_threads: int = 0,
        cuda_graphs: bool = True,
        policy: Any = None,
        fast_path: Optional[bool] = None,
        compile: Optional[bool] = None,
        attention: Optional[str] = None,
        sync_prefix: Optional[bool] = None,
        prefix_attention: Optional[str] = None,
    ) -> None:
        """CUDA options (ignored on the CPU, which always runs the policy as written): ``fast_path``
        (default on, env ``VLA_TORCH_FAST``) serves through ``FastPolicy``; ``compile`` (default
        ``DEFAULT_COMPILE``, env ``VLA_TORCH_COMPILE``) lets ``torch.compile`` fuse its elementwise
        work; ``attention`` 'split' (default, env ``VLA_TORCH_ATTENTION``) or 'joint' (SDPA over the
        concatenated keys, for A/B); ``sync_prefix`` (default on, env ``VLA_TORCH_SYNC_PREFIX``): stage 1
        waits for its GPU work, so the vision stage time is the GPU time; off, it returns once the
        work is queued (stage 2 waits on the slot's event) and the next request's preprocessing
        overlaps the vision pass; ``prefix_attention`` 'manual' (default, env
        ``VLA_TORCH_PREFIX_ATTENTION``) or 'sdpa' for the prefix backbone's attention."""
        if torch is None:
            raise BackendUnavailableError(self.name, "PyTorch (`torch`)", str(_IMPORT_ERROR))
        if device not in DEVICES:
            raise ValueError(f"device: expected one of {DEVICES}, received {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(self.name, "a CUDA build of PyTorch and a visible GPU",
                                          f"torch {torch.__version__}, torch.cuda.is_available() is False")
        precision = precision or ("bf16" if device == "cuda" else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, received {precision!r}")
        if device == "cpu" and precision != "fp32":
            raise ValueError(f"precision: the CPU path runs fp32 (the parity reference), received {precision!r}")
        super().__init__(manifest, precision, source_precision="fp32")
        self._device = device
        self.intra_op_threads = intra_op_threads
        self.cuda_graphs = cuda_graphs
        self.dtype = _torch_dtype(precision)
        self.policy = policy
        self._weights_path: Optional[Path] = None if policy is not None else self._verified_weights_path()
        self.fast_path = _env_flag("VLA_TORCH_FAST", True) if fast_path is None else bool(fast_path)
        self.compile = _env_flag("VLA_TORCH_COMPILE", DEFAULT_COMPILE) if compile is None else bool(compile)
        self.attention = attention or os.environ.get("VLA_TORCH_ATTENTION") or "split"
        if self.attention not in ("split", "joint"):
            raise ValueError(f"attention: expected 'split' or 'joint', received {self.attention!r}")
        self.sync_prefix = _env_flag("VLA_TORCH_SYNC_PREFIX", True) if sync_prefix is None else bool(sync_prefix)
        self.prefix_attention = prefix_attention or os.environ.get("VLA_TORCH_PREFIX_ATTENTION") or "manual"
        if self.prefix_attention not in ("manual", "sdpa"):
            raise ValueError(f"prefix_attention: expected 'manual' or 'sdpa', received {self.prefix_attention!r}")
        self._fast: Optional[FastPolicy] = None
        self._fast_note = ""
        self._slots: List[_DeviceSlot] = []
        self._static: Dict[str, Any] = {}

    @classmethod
    def from_policy(
        cls, policy: Any, cfg: VlaConfig, device: str = "cpu", precision: Optional[str] = None, **options: Any
    ) -> "TorchBackend":
        """Serve an in-memory ``VlaPolicy`` (no model directory): checks and timing runs."""
        manifest = Manifest(Path(f"<in-memory policy: {cfg.preset}>"), cfg, {}, {"in_memory_policy": True})
        return cls(manifest, precision=precision, device=device, policy=policy, **options)

    @classmethod
    def with_random_weights(
        cls, cfg: VlaConfig, device: str = "cuda", precision: Optional[str] = None, seed: int = 0, **options: Any
    ) -> "TorchBackend":
        """A backend on freshly initialised weights, built on the device in the serving dtype."""
        if torch is None:
            raise BackendUnavailableError(cls.name, "PyTorch (`torch`)", str(_IMPORT_ERROR))
        from vla_inference.model.policy import build_policy

        dtype = _torch_dtype(precision or ("bf16" if device == "cuda" else "fp32"))
        torch.manual_seed(seed)
        with torch.device(device):
            policy = build_policy(cfg)
        return cls.from_policy(policy.to(dtype=dtype).eval(), cfg, device, precision, **options)

    @property
    def device(self) -> str:
        return self._device

    def _verified_weights_path(self) -> Path:
        record = self.manifest.raw.get("weights")
        manifest_path = self.manifest.model_dir / MANIFEST_NAME
        if not isinstance(record, dict) or "file" not in record:
            raise ModelDirError(f"{manifest_path}: lists no weights file (the torch backend needs one)")
        path = self.manifest.model_dir / record["file"]
        if not path.is_file():
            raise ModelDirError(f"{path}: weights file listed in the manifest is missing")
        if path.stat().st_size != record.get("bytes"):
            raise ModelDirError(f"{path}: size {path.stat().st_size} bytes, manifest says {record.get('bytes')}")
        if sha256_of(path) != record.get("sha256"):
            raise ModelDirError(f"{path}: SHA-256 differs from the manifest (corrupt or replaced file)")
        return path

    # -- runner ---------------------------------------------------------------------------------
    def _load(self) -> None:
        if self.intra_op_threads > 0:
            torch.set_num_threads(self.intra_op_threads)
        if self.policy is None:
            from vla_inference.model.policy import load_policy

            try:
                policy = load_policy(self._weights_path, self.config)
            except (OSError, RuntimeError, ValueError, KeyError) as exc:
                raise ModelDirError(f"{self._weights_path}: cannot load the policy weights ({exc})") from exc
            self.policy = policy
        self.policy = self.policy.to(device=self._device, dtype=self.dtype).eval()
        if self._device == "cuda":
            torch.backends.cuda.enable_flash_sdp(True)
            torch.backends.cuda.enable_mem_efficient_sdp(True)
            self._streams = {
                VISION: torch.cuda.Stream(priority=0),
                ACTION_EXPERT: torch.cuda.Stream(priority=-100),  # clamped to the device's highest
            }
        LOG.info("torch %s: policy on %s in %s", torch.__version__, self._device, self.precision)

    def _module(self, engine_name: str) -> Callable[..., Any]:
        return self.policy.vision_engine if engine_name == VISION else self.policy.action_expert

    def _infer(self, engine_name: str, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        spec = self.specs[engine_name]
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])).to(self._device) for t in spec.inputs]
            outputs = self._module(engine_name)(*args)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        result = {}
        for tensor_spec, value in zip(spec.outputs, outputs):
            value = value.detach()
            if value.is_floating_point():
                value = value.float()
            result[tensor_spec.name] = value.cpu().numpy()
        return result

    def _release(self) -> None:
        if self._device == "cuda":
            for stream in self._streams.values():
                stream.synchronize()
        self._slots = []
        self._static = {}
        if self._fast is not None:
            self._fast.uninstall()
            self._fast = None
        self.policy = None if self._weights_path is not None else self.policy
        if self._device == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> Dict[str, Any]:
        info = super().describe()
        info.update(torch=torch.__version__, cuda_graphs=self.cuda_graphs and self._device == "cuda")
        if self._device == "cuda":
            info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                        fast_path=self._fast is not None, compile=self._fast is not None and self._fast.compile,
                        attention=self.attention if self._fast is not None else "policy",
                        prefix_attention=self.prefix_attention if self._fast is not None else "policy",
                        sync_prefix=self.sync_prefix, fast_path_note=self._fast_note)
        return info

    # -- pipeline stages (CUDA) -----------------------------------------------------------------
    def prepare(self, num_samples: int, slots: int, view_rows: int = 1) -> None:
        super().prepare(num_samples, slots, view_rows)
        if self._device != "cuda":
            return
        if self._fast is not None:  # a previous prepare's fast path: the self-check needs the policy as written
            self._fast.uninstall()
        self._fast = None
        if self.fast_path:
            self._fast = self._build_fast(self.compile)
        try:
            with torch.inference_mode():
                self._prepare_cuda(num_samples, slots)
        except Exception as exc:  # noqa: BLE001 - a compile failure must not take serving down
            if self._fast is None or not self._fast.compile:
                raise
            LOG.warning("torch.compile fast path failed (%s: %s); serving the eager fast path", type(exc).__name__, exc)
            compile_note = f"compile failed: {type(exc).__name__}: {str(exc)[:200]}"
            self._fast.uninstall()
            torch.cuda.synchronize()
            self._fast = self._build_fast(False)
            self._fast_note = f"{compile_note}; {self._fast_note}"
            with torch.inference_mode():
                self._prepare_cuda(num_samples, slots)

    def _build_fast(self, compile: bool) -> Optional[FastPolicy]:
        """The fast path, checked once against the policy as written (fp32 reference inputs are not
        needed: both run in the serving dtype on the same weights; they differ only by rounding)."""
        fast = FastPolicy(self.policy, compile=False, attention=self.attention, prefix_attention=self.prefix_attention)
        try:
            cosines = self._self_check(fast)
        except Exception as exc:  # noqa: BLE001 - a broken fast path falls back to the policy as written
            LOG.error("fast path self-check raised %s: %s; serving the policy as written", type(exc).__name__, exc)
            self._fast_note = f"self-check raised {type(exc).__name__}: {str(exc)[:200]}"
            return None
        # NaN compares false against everything: only finite cosines above the bar pass.
        if not all(math.isfinite(c) and c >= SELF_CHECK_MIN_COSINE for c in cosines):
            LOG.error("fast path disagrees with the policy (cosine %s); serving the policy as written", cosines)
            self._fast_note = f"self-check failed: cosines {cosines}"
            return None
        self._fast_note = (f"self-check cosines prefix {cosines[0]:.6f}, velocity {cosines[1]:.6f}, "
                           f"per-sample velocity {cosines[2]:.6f}")
        if compile:
            fast = FastPolicy(self.policy, compile=True, attention=self.attention,
                              prefix_attention=self.prefix_attention)
        fast.install()
        return fast

    def _self_check(self, fast: FastPolicy) -> List[float]:
        """Cosine of (fast, policy) for the prefix keys/values and one velocity on seeded inputs."""
        cfg, dev = self.config, torch.device("cuda")
        gen = torch.Generator(device="cpu").manual_seed(1234)
        feeds = {}
        for t in self.specs[VISION].inputs:
            shape = t.concrete_shape(1)
            if t.dtype == "float32":
                feeds[t.name] = torch.rand(shape, generator=gen).mul_(2.0).sub_(1.0).abs_().to(dev)
            elif t.dtype == "bool":
                feeds[t.name] = torch.ones(shape, dtype=torch.bool).to(dev)
            else:
                feeds[t.name] = torch.randint(0, 256, shape, generator=gen).to(dev)
        feeds["text_mask"][:, cfg.text_max_len // 2:] = False
        k = 2
        x = torch.randn((k, cfg.action_horizon, cfg.action_dim), generator=gen).to(dev)
        t = torch.full((1,), 0.7, dtype=torch.float32, device=dev)
        ve, ex = self.policy.vision_engine, self.policy.action_expert
        args = [feeds[t_.name] for t_ in self.specs[VISION].inputs]
        with torch.inference_mode():
            ref_kv, mask = ve(*args)
            fast.install()
            try:
                fast_kv, _ = ve(*args)
            finally:
                fast.uninstall()
            ref_v = ex(x, t.expand(k), ref_kv.expand(k, *ref_kv.shape[1:]), mask.expand(k, -1))
            table = fast.modulation_table(t)[0]
            fast_v = fast.velocity(x, t, table, *fast.pad_prefix(fast_kv[0], mask[0]))
            per_sample_v = fast.velocity(x, t, table, *fast.pad_prefix(fast_kv.expand(k, *fast_kv.shape[1:]),
                                                                       mask.expand(k, -1)))
        cos = torch.nn.functional.cosine_similarity
        pairs = ((fast_kv, ref_kv), (fast_v, ref_v), (per_sample_v, ref_v))
        return [float(cos(a.double().flatten(), b.double().flatten(), dim=0)) for a, b in pairs]

    def _prepare_cuda(self, k: int, slots: int) -> None:
        """Allocate static buffers and capture the prefix graph and one step graph per slot."""
        cfg = self.config
        dev = torch.device("cuda")
        vision_spec = self.specs[VISION]
        static: Dict[str, Any] = {"vision": {}, "sample_index": {}}
        static["inputs_copied"] = torch.cuda.Event()
        static["inputs_copied"].record(self._streams[VISION])
        static["x"] = torch.zeros((k, cfg.action_horizon, cfg.action_dim), dtype=torch.float32, device=dev)
        static["noise_host"] = torch.zeros(static["x"].shape, dtype=torch.float32, pin_memory=True)
        static["result_host"] = torch.zeros(static["x"].shape, dtype=torch.float32, pin_memory=True)
        static["schedule"] = torch.zeros((MAX_STEPS,), dtype=torch.float32, device=dev)
        static["schedule_host"] = torch.zeros((MAX_STEPS,), dtype=torch.float32, pin_memory=True)
        static["step"] = torch.zeros((1,), dtype=torch.int64, device=dev)
        static["dt"] = torch.zeros((), dtype=torch.float32, device=dev)
        static["done"] = torch.cuda.Event()
        fast = self._fast
        if fast is not None:
            static["mods"] = torch.zeros((MAX_STEPS, fast.mod_rows, cfg.expert.width), dtype=self.dtype, device=dev)
            static["mods_steps"] = None
            static["mod_tables"] = {}
        self._static = static

        for rows in range(1, self.view_rows + 1):  # one vision graph per number of view rows
            inputs = {t.name: torch.zeros(t.concrete_shape(rows), dtype=_numpy_to_torch_dtype(t.dtype), device=dev)
                      for t in vision_spec.inputs}
            inputs["camera_mask"].fill_(True)
            inputs["text_mask"][:, 0] = True

            def vision_pass(inputs: Dict[str, Any] = inputs) -> Any:
                return self.policy.vision_engine(*(inputs[t.name] for t in vision_spec.inputs))

            graph, out = self._capture(vision_pass, self._streams[VISION])
            host = {name: torch.zeros(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                    for name, tensor in inputs.items()}
            static["vision"][rows] = {"in": inputs, "host": host, "fn": vision_pass, "graph": graph, "out": out}
        prefix_kv, prefix_mask = (t[0] for t in static["vision"][1]["out"])
        if self.view_rows > 1:  # camera views: a prefix row per sample
            prefix_kv, prefix_mask = prefix_kv.expand(k, *prefix_kv.shape), prefix_mask.expand(k, -1)
        padded_len = fast.prefix_len_padded if fast is not None else cfg.prefix_len
        from vla_inference.model.policy import MASK_BIAS

        self._slots = [_DeviceSlot(prefix_kv, prefix_mask, padded_len, MASK_BIAS) for _ in range(slots)]
        if fast is not None:  # a valid table row for the capture warm-up
            static["mods"][:1].copy_(fast.modulation_table(static["schedule"][:1] + 1.0))
        static["step_fns"], static["step_graphs"] = [], []
        for slot in self._slots:
            step = self._make_step(slot)
            static["step"].zero_()
            graph, _ = self._capture(step, self._streams[ACTION_EXPERT], reset=lambda: static["step"].zero_())
            static["step_fns"].append(step)
            static["step_graphs"].append(graph)
        torch.cuda.synchronize()

    def _make_step(self, slot: _DeviceSlot) -> Callable[[], Any]:
        """One denoising step on static buffers: t = schedule[step]; x += dt * v(x, t); step += 1."""
        static = self._static
        k = static["x"].shape[0]
        fast = self._fast

        if fast is not None:
            def denoise_step() -> Any:
                t = static["schedule"].index_select(0, static["step"])
                mods = static["mods"].index_select(0, static["step"])[0]
                velocity = fast.velocity(static["x"], t, mods, slot.padded_kv, slot.bias)
                static["x"].add_(velocity * static["dt"])
                static["step"].add_(1)
                return velocity

            return denoise_step

        kv = slot.prefix_kv if slot.per_sample else slot.prefix_kv[None].expand(k, *slot.prefix_kv.shape)
        mask = slot.prefix_mask if slot.per_sample else slot.prefix_mask[None].expand(k, -1)

        def policy_step() -> Any:
            t = static["schedule"].index_select(0, static["step"]).expand(k)
            velocity = self.policy.action_expert(static["x"], t, kv, mask)
            static["x"].add_(velocity * static["dt"])
            static["step"].add_(1)
            return velocity

        return policy_step

    def _capture(self, fn: Callable[[], Any], stream: "torch.cuda.Stream",
                 reset: Optional[Callable[[], Any]] = None) -> Any:
        """Warm ``fn`` up on ``stream`` and capture it as a CUDA graph: (graph or None, outputs)."""
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(GRAPH_WARMUP_ITERS):
                if reset is not None:
                    reset()
                out = fn()
            if reset is not None:
                reset()
        torch.cuda.current_stream().wait_stream(stream)
        if not self.cuda_graphs:
            return None, out
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            out = fn()
        return graph, out

    def encode_prefix(self, feeds: Mapping[str, np.ndarray], slot: int,
                      sample_rows: Optional[Sequence[int]] = None) -> Any:
        if self._device != "cuda":
            return super().encode_prefix(feeds, slot, sample_rows)
        views = check_inputs(self.specs[VISION], feeds)
        rows = self.check_sample_rows(feeds, sample_rows)
        static = self._static
        vision = static["vision"][views]
        stream = self._streams[VISION]
        target = self._slots[slot]
        static["inputs_copied"].synchronize()  # the previous request's host-to-device copies are done
        with torch.inference_mode(), torch.cuda.stream(stream):
            for name, host in vision["host"].items():
                host.numpy()[...] = feeds[name]
                vision["in"][name].copy_(host, non_blocking=True)
            static["inputs_copied"].record(stream)
            if vision["graph"] is not None:
                vision["graph"].replay()
                prefix_kv, prefix_mask = vision["out"]
            else:
                prefix_kv, prefix_mask = vision["fn"]()
            if target.per_sample:
                index = self._sample_index(rows)
                target.prefix_kv.copy_(prefix_kv.index_select(0, index))
                target.prefix_mask.copy_(prefix_mask.index_select(0, index))
            else:
                target.prefix_kv.copy_(prefix_kv[0])
                target.prefix_mask.copy_(prefix_mask[0])
            if self._fast is not None:
                target.bias[..., :prefix_mask.shape[-1]].copy_(self._fast.mask_bias(target.prefix_mask))
            target.ready.record(stream)
        if self.sync_prefix:
            target.ready.synchronize()
        return slot

    def _sample_index(self, rows: np.ndarray) -> "torch.Tensor":
        """Each sample's view row as a device index, uploaded once per pattern (a blocking copy)."""
        key = tuple(int(r) for r in rows)
        cache = self._static["sample_index"]
        if key not in cache:
            cache[key] = torch.tensor(key, dtype=torch.int64, device="cuda")
        return cache[key]

    def _modulations(self, steps: int, times: np.ndarray) -> None:
        """Make ``static['mods'][:steps]`` the modulation table of this steps value (on the current stream)."""
        static, fast = self._static, self._fast
        if static["mods_steps"] == steps:
            return
        table = static["mod_tables"].get(steps)
        if table is None:
            if len(static["mod_tables"]) >= MOD_TABLE_CACHE:
                static["mod_tables"].clear()
            table = fast.modulation_table(torch.from_numpy(times).to("cuda", non_blocking=False))
            static["mod_tables"][steps] = table
        static["mods"][:steps].copy_(table)
        static["mods_steps"] = steps

    def denoise(self, prefix: Any, noise: np.ndarray, steps: int) -> np.ndarray:
        if self._device != "cuda":
            return super().denoise(prefix, noise, steps)
        if steps > MAX_STEPS:
            raise ValueError(f"steps: at most {MAX_STEPS} on the CUDA path, received {steps}")
        static = self._static
        if noise.shape != tuple(static["x"].shape):
            raise ValueError(f"noise: expected shape {tuple(static['x'].shape)}, received {noise.shape}")
        times, dt = flow_schedule(steps)
        slot = self._slots[prefix]
        graph, step_fn = static["step_graphs"][prefix], static["step_fns"][prefix]
        stream = self._streams[ACTION_EXPERT]
        with torch.inference_mode(), torch.cuda.stream(stream):
            if self._fast is not None:
                self._modulations(steps, times)
            stream.wait_event(slot.ready)
            static["noise_host"].numpy()[...] = noise
            static["schedule_host"].numpy()[:steps] = times
            static["x"].copy_(static["noise_host"], non_blocking=True)
            static["schedule"].copy_(static["schedule_host"], non_blocking=True)
            static["step"].zero_()
            static["dt"].fill_(float(dt))
            for _ in range(steps):
                if graph is not None:
                    graph.replay()
                else:
                    step_fn()
            static["result_host"].copy_(static["x"], non_blocking=True)
            static["done"].record(stream)
        static["done"].synchronize()
        return static["result_host"].numpy().copy()


def cuda_memory_peak_bytes() -> Optional[int]:
    """Peak GPU memory allocated by PyTorch in this process, or None without CUDA."""
    if torch is None or not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_allocated())


def reset_cuda_memory_peak() -> None:
    if torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


__all__ = ["TorchBackend", "cuda_memory_peak_bytes", "reset_cuda_memory_peak"]
