"""Oracle for pi0.5 parity test 2: LeRobot 0.4.4's own ``PI05Policy`` at shrunk shapes, freshly random.

Runs INSIDE the reference venv that ``scripts/setup_pi05_reference.sh`` installs (never in the project
venv, which has no lerobot)::

    .cache/pi05-reference/bin/python test/pi05_oracle.py --shape small --seed 0 --out DIR

The architecture code of LeRobot and of the openpi-patched transformers is used unchanged; only
configuration values shrink, through the three names ``lerobot.policies.pi05.modeling_pi05`` looks up
while ``PaliGemmaWithExpertModel.__init__`` runs: ``get_gemma_config`` (widths, depth, heads, head_dim)
and the ``PaliGemmaForConditionalGeneration`` / ``GemmaForCausalLM`` constructors (vocab, SigLIP sizes,
projector width, which that ``__init__`` hard-codes). Every parameter is then redrawn from the seed so
that cameras, tokens and the flow time visibly move the outputs (HF's init leaves the expert's gated
residuals near zero).

DIR receives:

* ``checkpoint/``: ``policy.save_pretrained`` (config.json, model.safetensors) plus the pre/postprocessor
  files LeRobot's ``make_pre_post_processors`` writes (quantile stats for state and action), and
  ``tokenizer/``, a small offline word-level stand-in for the PaliGemma tokenizer (not PaliGemma's ids).
* ``oracle.safetensors``: fixed inputs and LeRobot's outputs (layouts in ``TENSOR_NOTES``).
* ``oracle.json``: shape parameters, the HF configs as built, seed, versions, features, tensor notes.

The project side (``test/pi05_reference.py``) imports this module only for ``SHAPES``; everything
beyond the standard library is imported inside functions.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

NUM_HEADS = 8  # compute_layer_complete reshapes the attention output to 1 * 8 * head_dim: fixed
PATCH_SIZE = 14
IMAGE_SIZE = 224
BATCH = 2
NUM_STEPS = 10
VELOCITY_TIMES = (1.0, 0.7, 0.3, 0.1)
MASKED = (1, 2)  # (sample, camera) that the "masked." variant marks missing


@dataclass(frozen=True)
class Shape:
    """One shrunk pi0.5. Both Gemmas share depth, 8 heads, kv_heads and head_dim (joint attention)."""

    depth: int
    head_dim: int
    num_kv_heads: int
    vlm_width: int
    vlm_mlp: int
    expert_width: int
    expert_mlp: int
    vocab: int
    expert_vocab: int
    siglip_hidden: int
    siglip_intermediate: int
    siglip_layers: int
    siglip_heads: int
    state_dim: int
    action_dim: int
    cameras: tuple[str, str, str]


_PI05_CAMERAS = ("observation.images.base_0_rgb", "observation.images.left_wrist_0_rgb",
                 "observation.images.right_wrist_0_rgb")

# The kit's tiny checkpoint is widths 64/32, depth 2, head_dim 16, kv 1, vocab 1024, SigLIP 48/96/2/4:
# each shape below differs from it and from the others in several of those.
SHAPES: dict[str, Shape] = {
    # one layer, narrow heads, attention width 8*8=64 above both model widths (40, 24), odd action/state dims
    "small": Shape(depth=1, head_dim=8, num_kv_heads=1, vlm_width=40, vlm_mlp=72, expert_width=24, expert_mlp=56,
                   vocab=320, expert_vocab=16, siglip_hidden=32, siglip_intermediate=64, siglip_layers=1,
                   siglip_heads=2, state_dim=6, action_dim=5, cameras=_PI05_CAMERAS),
    # wide heads, grouped-query attention (2 kv heads), expert as wide as the VLM, full 32-dim actions
    "wide": Shape(depth=2, head_dim=32, num_kv_heads=2, vlm_width=96, vlm_mlp=160, expert_width=96, expert_mlp=128,
                  vocab=4096, expert_vocab=64, siglip_hidden=64, siglip_intermediate=112, siglip_layers=2,
                  siglip_heads=8, state_dim=32, action_dim=32, cameras=_PI05_CAMERAS),
    # three layers, 4 kv heads, 3 SigLIP layers with 5 heads, ALOHA-style camera names
    "deep": Shape(depth=3, head_dim=16, num_kv_heads=4, vlm_width=48, vlm_mlp=96, expert_width=32, expert_mlp=80,
                  vocab=640, expert_vocab=32, siglip_hidden=40, siglip_intermediate=72, siglip_layers=3,
                  siglip_heads=5, state_dim=14, action_dim=14,
                  cameras=("observation.images.cam_high", "observation.images.cam_left_wrist",
                           "observation.images.cam_right_wrist")),
}

TENSOR_NOTES = {
    "image_0, image_1, image_2": "float32 [B,3,224,224] in [0,1], cameras in config order (oracle.json cameras); "
                                 "batch keys for predict_action_chunk",
    "tokens": "int64 [B,200] observation.language.tokens; random ids in [3,vocab) after a <bos>=2, 0 where masked",
    "attention_mask": "bool [B,200] observation.language.attention_mask; right-padded, per-sample valid lengths",
    "noise": "float32 [B,50,32] the x_1 passed as predict_action_chunk(batch, noise=noise, num_steps=10)",
    "image_masks": "bool [B,3] per-camera validity of the main outputs: all True",
    "prefix_embs": "float32 [B,P,vlm_width] embed_prefix output: 3*256 image tokens (SigLIP+projector, "
                   "not scaled) then 200 token embeddings * sqrt(vlm_width); P = 968",
    "prefix_pad_mask": "bool [B,P] prefix validity (image mask per image token, attention_mask per token)",
    "prefix_k, prefix_v": "float32 [B,depth,kv_heads,P,head_dim] the VLM's cached keys (after RoPE) / values "
                          "per layer after the prefix pass; rows where prefix_pad_mask is False are never "
                          "attended and (beyond layer 0) hold fully-masked-attention artefacts: compare valid rows",
    "velocity_t": "float32 [T] flow times of the velocity probes: 1.0, 0.7, 0.3, 0.1",
    "velocity_x_t": "float32 [B,50,32] the one fixed x_t (standard normal) fed at every probe time, so the "
                    "probes differ only through the time conditioning (adaRMS)",
    "velocity": "float32 [T,B,50,32] PI05Pytorch.denoise_step(prefix_pad_mask, cached prefix, x_t, t) "
                "= action_out_proj(expert output)",
    "euler_t": "float32 [10] the t of each Euler step inside sample_actions (1.0, 0.9, ..., 0.1)",
    "euler_x_t": "float32 [10,B,50,32] x_t entering each Euler step (euler_x_t[0] = noise)",
    "euler_velocity": "float32 [10,B,50,32] velocity of each Euler step; x_next = x_t - 0.1 * v",
    "actions_full": "float32 [B,50,32] sample_actions result (x_0, model space, all 32 dims)",
    "actions": "float32 [B,50,action_dim] predict_action_chunk(batch, noise=noise, num_steps=10): "
               "actions_full cut to the action dim (normalized space, no postprocessor)",
    "masked.image_masks": "bool [B,3] like image_masks but camera 3 of sample 1 False (same pixels); fed "
                          "straight to PI05Pytorch.sample_actions, because predict_action_chunk can only "
                          "drop a camera key for the whole batch",
    "masked.*": "the same outputs as above (same images, tokens, noise, probes) under masked.image_masks",
    "sensitivity.*": "float32 [B,50,action_dim] predict_action_chunk with one input changed: "
                     "camera (camera 1 of sample 0 redrawn), token (token 1 of sample 0 changed), "
                     "so tolerances can be set against how far an input moves the actions",
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- building the shrunk policy


@contextlib.contextmanager
def shrunk_constructors(shape: Shape):
    """While active, modeling_pi05 builds its two Gemmas and SigLIP at ``shape`` (then restores the module)."""
    from lerobot.policies.pi05 import modeling_pi05 as m

    saved = {name: getattr(m, name) for name in ("get_gemma_config", "PaliGemmaForConditionalGeneration",
                                                 "GemmaForCausalLM")}
    vlm_cls, expert_cls = saved["PaliGemmaForConditionalGeneration"], saved["GemmaForCausalLM"]

    def gemma_config(variant: str):
        width, mlp = {"gemma_2b": (shape.vlm_width, shape.vlm_mlp),
                      "gemma_300m": (shape.expert_width, shape.expert_mlp)}[variant]
        return m.GemmaConfig(width=width, depth=shape.depth, mlp_dim=mlp, num_heads=NUM_HEADS,
                             num_kv_heads=shape.num_kv_heads, head_dim=shape.head_dim)

    def build_vlm(config):
        config._vocab_size = shape.vocab
        config.image_token_index = shape.vocab
        config.text_config.vocab_size = shape.vocab
        config.projection_dim = config.hidden_size = shape.vlm_width
        vision = config.vision_config
        vision.hidden_size = shape.siglip_hidden
        vision.intermediate_size = shape.siglip_intermediate
        vision.num_hidden_layers = shape.siglip_layers
        vision.num_attention_heads = shape.siglip_heads
        vision.projection_dim = shape.vlm_width  # the projector must land on the VLM width
        assert (vision.patch_size, vision.image_size) == (PATCH_SIZE, IMAGE_SIZE), (vision.patch_size, vision.image_size)
        return vlm_cls(config=config)

    def build_expert(config):
        config.vocab_size = shape.expert_vocab  # only sizes the unused expert lm_head
        return expert_cls(config=config)

    m.get_gemma_config = gemma_config
    m.PaliGemmaForConditionalGeneration = build_vlm
    m.GemmaForCausalLM = build_expert
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(m, name, value)


def make_config(shape: Shape):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.pi05.configuration_pi05 import PI05Config

    inputs = {key: PolicyFeature(type=FeatureType.VISUAL, shape=(3, IMAGE_SIZE, IMAGE_SIZE)) for key in shape.cameras}
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(shape.state_dim,))
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(shape.action_dim,))}
    return PI05Config(dtype="float32", device="cpu", input_features=inputs, output_features=outputs)


def redraw_parameters(policy, generator) -> int:
    """Fresh values for every parameter (tied ones once), in module order: matrices N(0, 1/fan_in), which
    includes the expert's adaRMS ``dense`` (so its scale/shift/gate are O(0.1-1) instead of ~0 after HF's
    init); biases and Gemma RMSNorm weights N(0, 0.1^2); SigLIP LayerNorm weights N(1, 0.1^2)."""
    import torch
    from torch import nn

    seen: set[int] = set()

    def draw(param, std: float, mean: float = 0.0) -> None:
        if id(param) in seen:
            return
        seen.add(id(param))
        with torch.no_grad():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float32) * std + mean)

    for module in policy.modules():
        own = dict(module.named_parameters(recurse=False))
        if isinstance(module, nn.LayerNorm):  # SigLIP's: y * weight + bias, so weight around 1
            draw(own.pop("weight"), 0.1, mean=1.0)
        for param in own.values():
            if param.dim() >= 2:  # Linear / Conv2d / Embedding weights: fan_in = all but the first dim
                draw(param, 1.0 / math.sqrt(param[0].numel()))
            else:  # biases, Gemma RMSNorm weights (applied as 1 + w)
                draw(param, 0.1)
    total = {id(p) for p in policy.parameters()}
    assert seen == total, f"{len(total - seen)} parameters not redrawn"
    return sum(p.numel() for p in policy.parameters())


# ---------------------------------------------------------------- recording LeRobot's internals


class Recorder:
    """Wraps the PI05Pytorch instance's embed_prefix / denoise_step / sample_actions to keep what one
    sample_actions call computed: the prefix embeddings, the prefix cache (passed to every denoise_step),
    each Euler step's x_t and velocity, and the returned x_0."""

    def __init__(self, model):
        self.model = model

    @contextlib.contextmanager
    def recording(self):
        model = self.model
        embed_prefix, denoise_step, sample_actions = model.embed_prefix, model.denoise_step, model.sample_actions
        self.prefix_embs = self.prefix_pad_masks = self.cache = self.actions_full = None
        self.steps = []

        def rec_embed_prefix(*args, **kwargs):
            out = embed_prefix(*args, **kwargs)
            self.prefix_embs = out[0].clone()
            return out

        def rec_denoise_step(prefix_pad_masks, past_key_values, x_t, timestep):
            if self.cache is None:
                self.prefix_pad_masks, self.cache = prefix_pad_masks, past_key_values
                self.cache_snapshot = [(k.clone(), v.clone()) for k, v in past_key_values]
            assert past_key_values is self.cache
            v_t = denoise_step(prefix_pad_masks=prefix_pad_masks, past_key_values=past_key_values,
                               x_t=x_t, timestep=timestep)
            self.steps.append((timestep.clone(), x_t.clone(), v_t.clone()))
            return v_t

        def rec_sample_actions(*args, **kwargs):
            self.actions_full = sample_actions(*args, **kwargs).clone()
            return self.actions_full

        model.embed_prefix, model.denoise_step, model.sample_actions = (rec_embed_prefix, rec_denoise_step,
                                                                         rec_sample_actions)
        try:
            yield self
        finally:
            del model.embed_prefix, model.denoise_step, model.sample_actions

    def outputs(self, velocity_t, velocity_x_t) -> dict:
        """The recorded tensors, plus the velocity probes run through the unwrapped denoise_step."""
        import torch

        layers = list(self.cache)
        for (k, v), (k0, v0) in zip(layers, self.cache_snapshot, strict=True):  # the steps must not grow the cache
            assert torch.equal(k, k0) and torch.equal(v, v0)
        probes = []
        with torch.no_grad():
            for t in velocity_t.tolist():
                timestep = torch.full((velocity_x_t.shape[0],), t, dtype=torch.float32)
                probes.append(self.model.denoise_step(prefix_pad_masks=self.prefix_pad_masks,
                                                      past_key_values=self.cache, x_t=velocity_x_t, timestep=timestep))
        velocity = torch.stack(probes)
        return {
            "prefix_embs": self.prefix_embs,
            "prefix_pad_mask": self.prefix_pad_masks.clone(),
            "prefix_k": torch.stack([k for k, _ in layers], dim=1).contiguous(),
            "prefix_v": torch.stack([v for _, v in layers], dim=1).contiguous(),
            "velocity": velocity.contiguous(),
            "euler_t": torch.stack([t[0] for t, _, _ in self.steps]),
            "euler_x_t": torch.stack([x for _, x, _ in self.steps]),
            "euler_velocity": torch.stack([v for _, _, v in self.steps]),
            "actions_full": self.actions_full,
        }


# ---------------------------------------------------------------- inputs, processors, the run


def make_inputs(shape: Shape, cfg, generator) -> dict:
    import torch

    length = cfg.tokenizer_max_length
    images = [torch.rand((BATCH, 3, IMAGE_SIZE, IMAGE_SIZE), generator=generator) for _ in shape.cameras]
    valid = [int(torch.randint(8, 64, (1,), generator=generator)), int(torch.randint(120, length + 1, (1,),
                                                                                   generator=generator))]
    mask = torch.arange(length)[None, :] < torch.tensor(valid)[:, None]
    tokens = torch.randint(3, shape.vocab, (BATCH, length), generator=generator, dtype=torch.int64)
    tokens[:, 0] = 2
    tokens[~mask] = 0
    noise = torch.randn((BATCH, cfg.chunk_size, cfg.max_action_dim), generator=generator)
    velocity_x_t = torch.randn((BATCH, cfg.chunk_size, cfg.max_action_dim), generator=generator)
    out = {f"image_{i}": img for i, img in enumerate(images)}
    out.update(tokens=tokens, attention_mask=mask, noise=noise,
               velocity_t=torch.tensor(VELOCITY_TIMES, dtype=torch.float32), velocity_x_t=velocity_x_t,
               other_image=torch.rand((3, IMAGE_SIZE, IMAGE_SIZE), generator=generator),
               other_token=torch.randint(3, shape.vocab, (1,), generator=generator))
    return out


def random_stats(dim: int, generator) -> dict:
    """Plausible per-dimension dataset statistics: min < q01 < mean < q99 < max."""
    import torch

    centre = torch.randn(dim, generator=generator) * 0.5
    half = 0.5 + torch.rand(dim, generator=generator)
    return {"min": centre - half - 0.25, "q01": centre - half, "mean": centre + 0.1 * torch.randn(dim, generator=generator),
            "std": half / 2, "q99": centre + half, "max": centre + half + 0.25}


def make_tokenizer(vocab_size: int):
    """A word-level stand-in with Gemma's special ids (<pad> 0, <eos> 1, <bos> 2, <unk> 3), prepending <bos>:
    enough to build and save LeRobot's tokenizer step offline. Not the PaliGemma tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<bos>", "<unk>", "Task", "State", "Action", ":", ",", ";", "-"]
    words += [str(i) for i in range(256)]
    assert len(words) <= vocab_size, (len(words), vocab_size)
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")


def save_processors(cfg, shape: Shape, checkpoint: Path, generator) -> list[str]:
    """LeRobot's own pre/postprocessors with quantile stats; the tokenizer step is handed the stand-in
    instead of downloading google/paligemma-3b-pt-224 (its saved config still names that tokenizer)."""
    from unittest import mock

    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.processor import tokenizer_processor

    tokenizer = make_tokenizer(shape.vocab)
    tokenizer.save_pretrained(checkpoint / "tokenizer")
    stats = {"observation.state": random_stats(shape.state_dim, generator),
             "action": random_stats(shape.action_dim, generator)}
    offline = mock.Mock()
    offline.from_pretrained.return_value = tokenizer
    with mock.patch.object(tokenizer_processor, "AutoTokenizer", offline):
        pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    assert offline.from_pretrained.call_args.args == ("google/paligemma-3b-pt-224",), offline.from_pretrained.call_args
    pre.save_pretrained(checkpoint)
    post.save_pretrained(checkpoint)
    return sorted(p.name for p in checkpoint.iterdir() if p.name.startswith("policy_"))


def hf_config_summary(policy) -> dict:
    """The sizes as the built HF modules hold them (so oracle.json states what was built, not what was asked)."""
    pwe = policy.model.paligemma_with_expert
    text, vision, expert = pwe.paligemma.config.text_config, pwe.paligemma.config.vision_config, pwe.gemma_expert.config
    gemma_keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps", "rope_theta",
                  "hidden_activation", "use_adarms", "adarms_cond_dim")
    vision_keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                   "image_size", "layer_norm_eps", "hidden_act", "projection_dim")
    return {"paligemma_text": {k: getattr(text, k) for k in gemma_keys},
            "action_expert": {k: getattr(expert, k) for k in gemma_keys},
            "siglip": {k: getattr(vision, k) for k in vision_keys},
            "projector": list(pwe.paligemma.model.multi_modal_projector.linear.weight.shape[::-1])}


def run(shape_name: str, seed: int, out: Path, threads: int) -> dict:
    import importlib.metadata as md

    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(threads)
    torch.manual_seed(seed)  # HF's own init draws from the global RNG; every value is redrawn below anyway
    shape = SHAPES[shape_name]
    from lerobot.policies.pi05.modeling_pi05 import PI05Policy

    t0 = time.perf_counter()
    cfg = make_config(shape)
    with shrunk_constructors(shape):
        policy = PI05Policy(cfg).eval()
    weights_gen = torch.Generator().manual_seed(2 * seed)
    inputs_gen = torch.Generator().manual_seed(2 * seed + 1)
    n_params = redraw_parameters(policy, weights_gen)
    t_build = time.perf_counter() - t0

    checkpoint = out / "checkpoint"
    policy.save_pretrained(checkpoint)
    processor_files = save_processors(policy.config, shape, checkpoint, inputs_gen)
    saved = load_file(checkpoint / "model.safetensors")
    state = policy.state_dict()
    assert all(torch.equal(saved[k], state[k]) for k in saved), "model.safetensors differs from the policy"

    x = make_inputs(shape, cfg, inputs_gen)
    batch = {key: x[f"image_{i}"] for i, key in enumerate(shape.cameras)}
    batch["observation.language.tokens"] = x["tokens"]
    batch["observation.language.attention_mask"] = x["attention_mask"]

    t0 = time.perf_counter()
    recorder = Recorder(policy.model)
    with recorder.recording():
        actions = policy.predict_action_chunk(batch, noise=x["noise"], num_steps=NUM_STEPS)
    main = recorder.outputs(x["velocity_t"], x["velocity_x_t"])
    assert torch.equal(actions, main["actions_full"][:, :, :shape.action_dim])

    # Per-sample missing camera: only reachable below predict_action_chunk (which drops keys batch-wide).
    with torch.no_grad():
        images, img_masks = policy._preprocess_images(batch)
    masked_masks = torch.stack(img_masks, dim=1).clone()
    masked_masks[MASKED] = False
    with recorder.recording():
        policy.model.sample_actions(images, list(masked_masks.unbind(1)), x["tokens"], x["attention_mask"],
                                    noise=x["noise"], num_steps=NUM_STEPS)
    masked = recorder.outputs(x["velocity_t"], x["velocity_x_t"])

    sensitivity = {}
    camera_batch = dict(batch)
    camera_batch[shape.cameras[0]] = batch[shape.cameras[0]].clone()
    camera_batch[shape.cameras[0]][0] = x["other_image"]
    token_batch = dict(batch)
    token_batch["observation.language.tokens"] = batch["observation.language.tokens"].clone()
    token_batch["observation.language.tokens"][0, 1] = x["other_token"][0]
    for name, changed in (("camera", camera_batch), ("token", token_batch)):
        sensitivity[name] = policy.predict_action_chunk(changed, noise=x["noise"], num_steps=NUM_STEPS)
    t_run = time.perf_counter() - t0

    tensors = {f"image_{i}": x[f"image_{i}"] for i in range(len(shape.cameras))}
    tensors.update({k: x[k] for k in ("tokens", "attention_mask", "noise", "velocity_t", "velocity_x_t")})
    tensors["image_masks"] = torch.ones((BATCH, len(shape.cameras)), dtype=torch.bool)
    tensors.update(main)
    tensors["actions"] = actions
    tensors["masked.image_masks"] = masked_masks
    tensors.update({f"masked.{k}": v for k, v in masked.items()})
    tensors.update({f"sensitivity.{k}": v for k, v in sensitivity.items()})
    tensors = {k: v.clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}  # no shared storage
    save_file(tensors, str(out / "oracle.safetensors"))

    prefix_len = main["prefix_pad_mask"].shape[1]
    report = {
        "what": "LeRobot 0.4.4 PI05Policy at a shrunk shape with fresh random weights (CPU, fp32); "
                "written by test/pi05_oracle.py",
        "shape_name": shape_name,
        "seed": seed,
        "oracle_sha256": _digest(Path(__file__)),
        "shape": {**asdict(shape), "num_heads": NUM_HEADS, "cameras": list(shape.cameras)},
        "paligemma": {"width": shape.vlm_width, "depth": shape.depth, "mlp_dim": shape.vlm_mlp, "num_heads": NUM_HEADS,
                      "num_kv_heads": shape.num_kv_heads, "head_dim": shape.head_dim, "vocab_size": shape.vocab},
        "action_expert": {"width": shape.expert_width, "depth": shape.depth, "mlp_dim": shape.expert_mlp,
                          "num_heads": NUM_HEADS, "num_kv_heads": shape.num_kv_heads, "head_dim": shape.head_dim,
                          "vocab_size": shape.expert_vocab},
        "siglip": {"hidden_size": shape.siglip_hidden, "intermediate_size": shape.siglip_intermediate,
                   "num_hidden_layers": shape.siglip_layers, "num_attention_heads": shape.siglip_heads,
                   "patch_size": PATCH_SIZE, "image_size": IMAGE_SIZE,
                   "tokens_per_image": (IMAGE_SIZE // PATCH_SIZE) ** 2},
        "hf_configs": hf_config_summary(policy),
        "num_parameters": n_params,
        "cameras": list(shape.cameras),
        "state_dim": shape.state_dim,
        "action_dim": shape.action_dim,
        "batch": BATCH,
        "chunk_size": cfg.chunk_size,
        "max_action_dim": cfg.max_action_dim,
        "max_state_dim": cfg.max_state_dim,
        "tokenizer_max_length": cfg.tokenizer_max_length,
        "prefix_len": prefix_len,
        "num_steps": NUM_STEPS,
        "velocity_t": list(VELOCITY_TIMES),
        "valid_tokens": x["attention_mask"].sum(1).tolist(),
        "masked_camera": {"sample": MASKED[0], "camera": MASKED[1], "key": shape.cameras[MASKED[1]]},
        "sensitivity_max_abs": {k: float((v - actions).abs().max()) for k, v in sensitivity.items()},
        "checkpoint_files": sorted(p.name for p in checkpoint.iterdir()),
        "processor_files": processor_files,
        "tensors": {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}
                    for k, v in sorted(tensors.items())},
        "notes": TENSOR_NOTES,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     **{d: md.version(d) for d in ("lerobot", "transformers", "safetensors", "numpy")}},
    }
    (out / "oracle.json").write_text(json.dumps(report, indent=1) + "\n")
    return {"build_s": round(t_build, 2), "run_s": round(t_run, 2), "params": n_params,
            "sensitivity": report["sensitivity_max_abs"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", required=True, choices=sorted(SHAPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="an empty or absent directory")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (fixed, so runs are bit-reproducible)")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary = run(args.shape, args.seed, args.out, args.threads)
    summary["total_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps({"shape": args.shape, "seed": args.seed, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
