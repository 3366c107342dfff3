"""Train the ``tiny`` policy on the synthetic reach task, then export, quantise, evaluate and ship it.

One command regenerates ``models/tiny`` (weights, ONNX engines, INT8 engines if they keep within
3 points of fp32 success, manifest, loss curve, evaluation and model card)::

    python -m vla_inference.lab.train --out models/tiny

Flow matching with an x0 head (see ``policy``): for each observation, ``--noise-draws`` pairs of
(noise, t ~ U(0, 1)) give x_t = t * noise + (1 - t) * actions, and the expert's clean-chunk estimate
is regressed onto the actions, in units of the per-dimension action scale. Camera count (1-3) and
LiDAR presence are drawn per batch so the masks are trained and the prefix leaves out what no
sample of the batch has (``PrefixTrim``). Matmuls run in bf16 autocast (``--precision``). Seeded and
CPU-only: the same command on the same software and CPU gives the same weights.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import vla_inference.synthetic as synthetic_package
from vla_inference.lab.evaluate import (
    DEFAULT_STEPS,
    build_eval_set,
    evaluate_model_dir,
    format_report,
)
from vla_inference.lab.sampler import EngineSampler
from vla_inference.model.export import WEIGHTS_FILE, export_engines, quantize_int8
from vla_inference.model.policy import (
    PrefixTrim,
    VlaPolicy,
    build_policy,
    count_parameters,
    load_policy,
    save_policy,
)
from vla_inference.runtime.backends import HostPrefix
from vla_inference.spec.config import VlaConfig, tiny
from vla_inference.spec.engine_spec import VISION, engine_specs
from vla_inference.spec.manifest import load_manifest, write_manifest
from vla_inference.synthetic.dataset import TrainingSet, generate_training_set
from vla_inference.synthetic.scene import COLOR_NAMES

PRECISIONS = ("fp32", "bf16")
INT8_MAX_SUCCESS_DROP = 0.03
# The synthetic task's end-effector position deltas: the served confidence measures the spread of
# the path they trace (runtime.confidence).
PATH_DIMS = (0, 1, 2)
SHIP_LIMIT_BYTES = 30 * 1024 * 1024
LOSS_CURVE_FILE = "loss_curve.png"
EVAL_FILE = "eval.json"
CARD_FILE = "MODEL_CARD.md"
TRAINING_FILE = "training.json"
PROBE_OFFSET_SCALE_M = 0.3
WORKSPACE_CENTRE_XY = np.array([0.525, 0.0], dtype=np.float32)
WORKSPACE_SCALE_M = 0.2


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 0
    layouts: int = 3000
    tasks_per_layout: int = 8
    steps: int = 4500
    batch: int = 32
    noise_draws: int = 2
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    ema_decay: float = 0.998
    grad_clip: float = 1.0
    aux_weight: float = 1.0
    trajectory_weight: float = 0.3
    scrambled_command_fraction: float = 0.0
    replan_fraction: float = 0.5
    camera_count_probs: tuple = (0.2, 0.2, 0.6)
    lidar_prob: float = 0.8
    threads: int = 2
    device: str = "cpu"
    precision: str = "bf16"


def _log(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


def _generator_version() -> str:
    """Hash of the synthetic generator's sources: a changed generator invalidates the cache."""
    digest = hashlib.sha256()
    sources = sorted(Path(synthetic_package.__file__).parent.glob("*.py"))
    sources.append(Path(__file__).parents[1] / "sensors" / "lidar_projection.py")
    for path in sources:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _generate_chunk(args: tuple) -> TrainingSet:
    first_seed, count, tasks, replan_fraction = args
    return generate_training_set(count, tasks, first_seed=first_seed, replan_fraction=replan_fraction)


def load_or_generate(layouts: int, tasks: int, cache_dir: Path, workers: int,
                     replan_fraction: float = 0.0) -> TrainingSet:
    """The training set, from ``cache_dir`` when a matching one is there (generated in parallel)."""
    key = f"layouts{layouts}_tasks{tasks}_replan{replan_fraction:g}_{_generator_version()}"
    path = cache_dir / key
    names = [f.name for f in fields(TrainingSet)]
    if (path / "complete").is_file():
        _log(f"loading cached training set {path}")
        return TrainingSet(**{name: np.load(path / f"{name}.npy") for name in names})
    _log(f"generating {layouts} layouts x {tasks} tasks with {workers} processes")
    chunk = 100
    jobs = [(start, min(chunk, layouts - start), tasks, replan_fraction) for start in range(0, layouts, chunk)]
    parts: List[TrainingSet] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for done, part in enumerate(pool.map(_generate_chunk, jobs), start=1):
            parts.append(part)
            _log(f"  {done * chunk if done < len(jobs) else layouts} / {layouts} layouts")
    offsets = np.cumsum([0] + [p.images.shape[0] for p in parts[:-1]])
    data = TrainingSet(
        images=np.concatenate([p.images for p in parts]),
        layout_index=np.concatenate([p.layout_index + o for p, o in zip(parts, offsets)]),
        **{name: np.concatenate([getattr(p, name) for p in parts]) for name in names if name not in ("images", "layout_index")},
    )
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        np.save(path / f"{name}.npy", getattr(data, name))
    (path / "complete").write_text("ok\n")
    return data


class ProgressBar:
    """One self-overwriting stderr line: step, bar, loss, rate and time left."""

    def __init__(self, total: int, width: int = 30) -> None:
        self.total, self.width, self.start = total, width, time.perf_counter()

    def update(self, step: int, loss: float, smoothed: float, aux: float) -> None:
        elapsed = time.perf_counter() - self.start
        rate = step / max(elapsed, 1e-9)
        left = (self.total - step) / max(rate, 1e-9)
        filled = int(self.width * step / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        sys.stderr.write(f"\r[train] {step:>5}/{self.total} |{bar}| loss {loss:.4f} (avg {smoothed:.4f}) aux {aux:.3f} "
                         f"{rate:.2f} it/s, {int(left) // 60}:{int(left) % 60:02d} left ")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


class AuxiliaryHeads(torch.nn.Module):
    """Training-only heads that hand each hop of the prefix a direct gradient for what the expert
    needs; never exported. Entering backbone layer 1: which colour word each text token belongs to.
    Per ViT token: which cube colour (or none) has its centre in the patch, and where in the patch.
    Entering layer 2: per image token holding a cube, the cube's table position. Entering the last
    layer: per image token, is it the named cube; per LiDAR token, does its sector hold a pole / one
    next to the path; on the state token, the named colour, the offset from the end effector to the
    named cube and whether a pole stands next to that path."""

    def __init__(self, vision_width: int, width: int) -> None:
        super().__init__()
        classes = len(COLOR_NAMES) + 1

        def head(outputs: int) -> torch.nn.Module:
            return torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, outputs))

        self.patch = torch.nn.Linear(vision_width, classes + 2)
        self.text = head(classes)
        self.target = head(1)
        self.world = head(2)
        self.sector = head(2)
        self.state = head(len(COLOR_NAMES) + 4)


def patch_labels(data: TrainingSet, indices: np.ndarray, cfg: VlaConfig) -> Dict[str, np.ndarray]:
    """Per (sample, camera slot, ViT token): colour class (``len(COLOR_NAMES)`` = none), in-patch
    offset of the cube centre in patch units, and whether it is the named cube."""
    patch, grid = cfg.vision.patch_size, cfg.vision.image_size // cfg.vision.patch_size
    batch, num_cams = len(indices), cfg.max_cameras
    layouts = data.layout_index[indices]
    pixels = data.block_pixels[layouts]  # [B, C, K, 2]
    colors = np.broadcast_to(data.block_colors[layouts][:, None, :], pixels.shape[:3])
    is_target = np.broadcast_to(
        np.arange(pixels.shape[2])[None, None, :] == data.target_slot[indices][:, None, None], pixels.shape[:3])
    cell = np.floor(np.nan_to_num(pixels, nan=-1.0) / patch).astype(np.int64)
    valid = (colors >= 0) & (cell >= 0).all(-1) & (cell < grid).all(-1)
    token = cell[..., 1] * grid + cell[..., 0]
    b, c, k = np.nonzero(valid)
    labels = np.full((batch, num_cams, grid * grid), len(COLOR_NAMES), dtype=np.int64)
    offsets = np.zeros((batch, num_cams, grid * grid, 2), dtype=np.float32)
    occupied = np.zeros((batch, num_cams, grid * grid), dtype=np.float32)
    targets = np.zeros((batch, num_cams, grid * grid), dtype=np.float32)
    world = np.zeros((batch, num_cams, grid * grid, 2), dtype=np.float32)
    world[b, c, token[b, c, k]] = (data.block_xy[layouts][b, k] - WORKSPACE_CENTRE_XY) / WORKSPACE_SCALE_M
    labels[b, c, token[b, c, k]] = colors[b, c, k]
    offsets[b, c, token[b, c, k]] = pixels[b, c, k] / patch - cell[b, c, k] - 0.5
    occupied[b, c, token[b, c, k]] = 1.0
    targets[b, c, token[b, c, k]] = is_target[b, c, k]
    return {"labels": labels, "offsets": offsets, "occupied": occupied, "targets": targets, "world": world}


def sector_labels(data: TrainingSet, indices: np.ndarray, cfg: VlaConfig) -> np.ndarray:
    """[B, LiDAR tokens, 2]: the column strip sees a pole / a pole next to the path (LiDAR at x=y=0)."""
    cols, per_token = cfg.lidar.cols, cfg.lidar.patch_cols
    labels = np.zeros((len(indices), cfg.lidar_tokens, 2), dtype=np.float32)
    poles = data.poles[indices]
    b, j = np.nonzero(np.isfinite(poles[:, :, 0]))
    x, y, radius, near = (poles[b, j, k] for k in range(4))
    azimuth = np.arctan2(y, x)
    half_width = np.arcsin(np.clip(radius / np.hypot(x, y), 0.0, 1.0))
    for edge in (-1.0, 0.0, 1.0):
        column = np.floor(0.5 * (1.0 - (azimuth + edge * half_width) / np.pi) * cols).astype(np.int64) % cols
        token = column // per_token
        labels[b, token, 0] = 1.0
        labels[b, token, 1] = np.maximum(labels[b, token, 1], near)
    return labels


def _masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    weight = weight.expand_as(values)
    return (values * weight).sum() / weight.sum().clamp(min=1.0)


def auxiliary_loss(heads: AuxiliaryHeads, extras: Dict[str, object], data: TrainingSet, indices: np.ndarray,
                   trim: PrefixTrim, cfg: VlaConfig) -> Dict[str, torch.Tensor]:
    """The auxiliary terms of one batch (see ``AuxiliaryHeads``), whose prefix was encoded with
    ``trim`` (every sample sees ``trim.cameras`` cameras, and the LiDAR when ``trim.lidar``)."""
    device = heads.patch.weight.device

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    labels = {k: tensor(v[:, : trim.cameras]) for k, v in patch_labels(data, indices, cfg).items()}
    first, second, last = (extras["layer_inputs"][i] for i in (0, 1, -1))  # type: ignore[index]
    segments = trim.segments(cfg)
    images = segments["images"]

    patch_out = heads.patch(extras["vit_tokens"])
    colour = F.cross_entropy(patch_out[..., :-2].flatten(0, 2), labels["labels"].flatten(), reduction="none")
    offset_error = ((patch_out[..., -2:] - labels["offsets"]) ** 2).sum(-1)
    named = F.binary_cross_entropy_with_logits(heads.target(last[:, images]).squeeze(-1),
                                               labels["targets"].flatten(1), reduction="none")
    world_error = ((heads.world(second[:, images]) - labels["world"].flatten(1, 2)) ** 2).sum(-1)
    text_colour = F.cross_entropy(heads.text(first[:, segments["text"]]).flatten(0, 1),
                                  tensor(data.text_colour[indices][:, : trim.text_len]).flatten(), reduction="none")
    state = heads.state(last[:, -1])
    named_colour = tensor(data.block_colors[data.layout_index[indices], data.target_slot[indices]])
    offset_target = tensor(data.target_offset[indices] / PROBE_OFFSET_SCALE_M)
    slow_target = tensor(data.slow[indices].astype(np.float32))
    zero = torch.zeros((), device=device)
    if trim.lidar:
        sector = F.binary_cross_entropy_with_logits(heads.sector(last[:, segments["lidar"]]),
                                                    tensor(sector_labels(data, indices, cfg)), reduction="none")
    return {
        "patch_colour": colour.mean(),
        "patch_offset": _masked_mean(offset_error, labels["occupied"]),
        "text_colour": text_colour.mean(),
        "patch_world": _masked_mean(world_error.view_as(labels["occupied"]), labels["occupied"]),
        "named_cube": named.mean(),
        "lidar_sector": 10.0 * sector.mean() if trim.lidar else zero,
        "state_colour": F.cross_entropy(state[:, : len(COLOR_NAMES)], named_colour),
        "state_offset": ((state[:, -4:-1] - offset_target) ** 2).mean(),
        "state_pole": F.binary_cross_entropy_with_logits(state[:, -1], slow_target) if trim.lidar else zero,
    }


def trajectory_loss(clean: torch.Tensor, actions: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """MSE of the cumulative end-effector path (action-scale units). The per-step loss barely sees a
    small bias repeated over 16 steps, yet that bias is what moves the chunk's end point: this
    term weighs errors by where they leave the arm."""
    predicted = torch.cumsum(clean[..., :3] / scale[:3], dim=1)
    target = torch.cumsum(actions[..., :3] / scale[:3], dim=1)
    return ((predicted - target) ** 2).mean()


def scramble_commands(feeds: Dict[str, np.ndarray], rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """A copy of ``feeds`` whose commands have their bytes permuted, so they name no colour.

    ``confidence_eval`` scores other scrambles (random letters, shuffled camera tiles), so the
    evaluation's AUROC measures generalisation, not recall."""
    out = dict(feeds)
    out["text_tokens"] = feeds["text_tokens"].copy()
    for row in range(out["text_tokens"].shape[0]):
        length = int(out["text_mask"][row].sum())
        out["text_tokens"][row, :length] = out["text_tokens"][row, :length][rng.permutation(length)]
    return out


def _lr_at(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(policy: VlaPolicy, data: TrainingSet, settings: TrainSettings) -> Tuple[List[float], List[Dict[str, float]]]:
    """Run the optimisation; leaves the EMA weights in ``policy``; returns the per-step flow losses
    and auxiliary loss terms."""
    if not 0.0 <= settings.scrambled_command_fraction < 1.0:
        raise ValueError(f"scrambled_command_fraction: expected [0, 1), received {settings.scrambled_command_fraction}")
    if settings.precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, received {settings.precision!r}")
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    device = torch.device(settings.device)
    policy.to(device)
    heads = AuxiliaryHeads(policy.cfg.vision.width, policy.cfg.backbone.width).to(device)
    decay, no_decay = [], []
    for name, param in list(policy.named_parameters()) + list(heads.named_parameters(prefix="aux")):
        (no_decay if param.ndim < 2 or "norm" in name or "position" in name or "embedding" in name else decay).append(param)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.95))
    params = list(policy.parameters())
    trained = params + list(heads.parameters())
    ema = [p.detach().clone() for p in params]
    scale = policy.action_expert.action_scale
    draws = settings.noise_draws
    order = rng.permutation(len(data))
    cursor = 0
    losses: List[float] = []
    aux_losses: List[Dict[str, float]] = []
    smoothed = float("nan")
    bar = ProgressBar(settings.steps)
    policy.train()
    # bf16 autocast keeps float32 master weights, optimiser state and normalisation statistics;
    # matmuls run in bf16 (about 1.4x faster per step on a CPU with AVX512-BF16), attention on a CPU
    # stays float32 (``policy.attention``).
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if settings.precision == "bf16"
                else contextlib.nullcontext())
    unnamed = int(round(settings.batch * settings.scrambled_command_fraction))
    informed = settings.batch - unnamed
    for step in range(settings.steps):
        if cursor + settings.batch > len(order):
            order, cursor = rng.permutation(len(data)), 0
        indices = order[cursor: cursor + informed]
        cursor += informed
        # One sensor set-up per batch, so the prefix can leave out what no sample has (PrefixTrim).
        camera_count = int(rng.choice([1, 2, 3], p=settings.camera_count_probs))
        with_lidar = bool(rng.random() < settings.lidar_prob)
        cameras = np.full(settings.batch, camera_count)
        lidar = np.full(settings.batch, with_lidar)
        feeds = data.vision_feeds(indices, cameras[:informed], lidar[:informed])
        targets = data.actions[indices]
        if unnamed:
            # Real scenes with a command that names nothing, paired with the chunks of random other
            # tasks: the flow learns to spread its samples (low confidence) for a command it cannot
            # read. Measured on this CPU budget (2,700 steps): 1/16 of the batch took the text /
            # all-scrambled AUROC from 0.52 / 0.49 to 0.79 / 0.82 but success from 78 % to 66 %;
            # 1/32 learnt no separation (0.50 / 0.57) and gave 73 %. Off by default for that reason.
            # Chunks to a random cube of the same scene were tried instead: the policy then also
            # hesitated between cubes on real commands (48-62 % success in GPU runs).
            scenes = rng.integers(len(data), size=unnamed)
            scrambled = scramble_commands(data.vision_feeds(scenes, cameras[informed:], lidar[informed:]), rng)
            feeds = {k: np.concatenate([feeds[k], scrambled[k]]) for k in feeds}
            targets = np.concatenate([targets, data.actions[rng.integers(len(data), size=unnamed)]])
        feeds_t = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}
        actions = torch.from_numpy(targets).repeat_interleave(draws, 0).to(device)

        trim = PrefixTrim(camera_count, with_lidar, int(feeds["text_mask"].sum(axis=1).max()))
        with autocast:
            prefix_kv, prefix_mask, extras = policy.vision_engine.encode(
                *(feeds_t[t.name] for t in engine_specs(policy.cfg)[VISION].inputs), trim=trim)
            informed_extras = {"vit_tokens": extras["vit_tokens"][:informed],  # type: ignore[index]
                               "layer_inputs": [x[:informed] for x in extras["layer_inputs"]]}  # type: ignore[union-attr]
            aux_terms = auxiliary_loss(heads, informed_extras, data, indices, trim, policy.cfg)
            aux_loss = sum(aux_terms.values())
            prefix_kv, prefix_mask = prefix_kv.repeat_interleave(draws, 0), prefix_mask.repeat_interleave(draws, 0)
            t = torch.rand(actions.shape[0], generator=generator).to(device)
            noise = torch.randn(actions.shape, generator=generator).to(device)
            x_t = t[:, None, None] * noise + (1.0 - t[:, None, None]) * actions
            clean = policy.action_expert.denoise(x_t, t, prefix_kv, prefix_mask, trimmed=True)
            flow_loss = (((clean - actions) / scale) ** 2).mean()
            path_loss = trajectory_loss(clean, actions, scale)
            loss = flow_loss + settings.trajectory_weight * path_loss + settings.aux_weight * aux_loss

        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, settings.grad_clip)
        optimizer.step()
        with torch.no_grad():
            rate = min(settings.ema_decay, (1.0 + step) / (10.0 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - rate)

        value = float(flow_loss.detach())
        losses.append(value)
        aux_losses.append({name: float(term.detach()) for name, term in aux_terms.items()})
        smoothed = value if math.isnan(smoothed) else 0.98 * smoothed + 0.02 * value
        if step % 5 == 0 or step + 1 == settings.steps:
            bar.update(step + 1, value, smoothed, sum(aux_losses[-1].values()))
    bar.close()
    with torch.no_grad():
        for param, average in zip(params, ema):
            param.copy_(average)
    policy.to("cpu").eval()
    return losses, aux_losses


def plot_losses(losses: Sequence[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(losses)
    window = max(1, len(values) // 50)
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=90)
    ax.semilogy(values, color="tab:blue", alpha=0.25, linewidth=0.8, label="per step")
    ax.semilogy(np.arange(window - 1, len(values)), smooth, color="tab:blue", label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("x0 loss (action-scale units, MSE)")
    ax.set_title("tiny policy: flow-matching training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parity(policy: VlaPolicy, out_dir: Path, files: Dict[str, str], scenes: int = 4, steps: int = 10) -> Dict[str, float]:
    """Max abs difference PyTorch vs ONNX Runtime fp32 on held-out inputs: each engine and a chunk.
    Writes a provisional manifest of the fp32 engines (``record_evaluation`` writes the final one)."""
    cfg = policy.cfg
    eval_set = build_eval_set(cfg, scenes)
    feeds = {k: torch.from_numpy(v) for k, v in eval_set.feeds.items()}
    t = np.full((scenes,), 0.4, np.float32)
    with torch.no_grad():
        kv, mask = policy.vision_engine(*(feeds[spec.name] for spec in engine_specs(cfg)[VISION].inputs))
        velocity = policy.action_expert(torch.from_numpy(eval_set.noise), torch.from_numpy(t), kv, mask)
        chunk = policy.sample(feeds, steps, torch.from_numpy(eval_set.noise))
    write_manifest(out_dir, cfg, {"fp32": files}, weights_file=WEIGHTS_FILE)
    with EngineSampler(load_manifest(out_dir)) as runtime:
        ort_prefix = runtime.encode(eval_set.feeds)
        ort_velocity = runtime.velocity(eval_set.noise, t, HostPrefix(kv.numpy(), mask.numpy()))
        ort_chunk = runtime(eval_set.feeds, eval_set.noise, steps)
    if not np.array_equal(ort_prefix.prefix_mask, mask.numpy()):
        raise RuntimeError("prefix_mask differs between PyTorch and ONNX Runtime")
    return {
        "vision_prefix_kv": float(np.abs(ort_prefix.prefix_kv - kv.numpy()).max()),
        "action_expert_velocity": float(np.abs(ort_velocity - velocity.numpy()).max()),
        f"chunk_{steps}_steps": float(np.abs(ort_chunk - chunk.numpy()).max()),
    }


def _directory_bytes(out_dir: Path, names: Sequence[str]) -> int:
    return sum((out_dir / n).stat().st_size for n in names)


def ship_model_dir(policy: VlaPolicy, out: Path, training: Dict[str, object], eval_scenes: int) -> Dict[str, object]:
    """Weights, fp32 + INT8 engines, parity, then ``record_evaluation`` for a trained policy.
    ``training`` (settings, timings, losses) is completed and written as training.json."""
    started = time.perf_counter()
    cfg = policy.cfg
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.onnx"):
        stale.unlink()
    save_policy(policy, out / WEIGHTS_FILE)
    _log("exporting ONNX engines")
    fp32 = export_engines(policy, out)
    int8, int8_record = quantize_int8(out, fp32, cfg)
    parity_errors = parity(policy, out, fp32)
    _log(f"parity (max abs error): {parity_errors}")
    training.update({
        "parameters": count_parameters(policy),
        "parity_max_abs_error": parity_errors,
        "torch": torch.__version__,
    })
    return record_evaluation(out, cfg, {"fp32": fp32, "int8": int8}, training, eval_scenes, started,
                             {"int8": int8_record})


def record_evaluation(out: Path, cfg: VlaConfig, engines: Dict[str, Dict[str, str]], training: Dict[str, object],
                      eval_scenes: int, packaging_started: Optional[float] = None,
                      quantization: Optional[Dict[str, Mapping[str, object]]] = None) -> Dict[str, object]:
    """Evaluate the engines in ``out`` and write what depends on it: the manifest (with the served
    confidence's keys, ``confidence_scale`` calibrated on real scenes), training.json, eval.json and
    the model card. INT8 stays only if its success is within ``INT8_MAX_SUCCESS_DROP`` of fp32."""
    confidence_keys: Dict[str, object] = {"path_dims": list(PATH_DIMS)}
    write_manifest(out, cfg, engines, weights_file=WEIGHTS_FILE, extra=confidence_keys, quantization=quantization)
    report = evaluate_model_dir(out, eval_scenes, DEFAULT_STEPS, progress=lambda m: _log(f"eval: {m}"))
    results = report["results"]
    if "int8" in engines:
        drop = results["onnxruntime/fp32"]["success"] - results["onnxruntime/int8"]["success"]  # type: ignore[index]
        training.update({"int8_shipped": drop <= INT8_MAX_SUCCESS_DROP, "int8_success_drop_points": 100 * drop})
        if drop > INT8_MAX_SUCCESS_DROP:
            _log(f"INT8 success is {100 * drop:.1f} points below fp32: not shipping it")
            for filename in engines.pop("int8").values():
                (out / filename).unlink()
    dispersion_p95 = report.get("confidence", {}).get("real_dispersion_p95")  # type: ignore[union-attr]
    if dispersion_p95:
        confidence_keys["confidence_scale"] = max(float(dispersion_p95), 1e-4)
    write_manifest(out, cfg, engines, weights_file=WEIGHTS_FILE, extra=confidence_keys, quantization=quantization)

    if packaging_started is not None:
        training["packaging_seconds"] = time.perf_counter() - packaging_started
    training["total_seconds"] = sum(float(training[k]) for k in ("data_seconds", "train_seconds", "packaging_seconds"))
    (out / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n")
    (out / EVAL_FILE).write_text(json.dumps(report, indent=2) + "\n")
    from vla_inference.lab.model_card import write_model_card

    write_model_card(out / CARD_FILE, cfg, training, report)
    return report


def print_summary(out: Path, training: Dict[str, object], report: Dict[str, object]) -> int:
    """The evaluation tables and a summary table; returns 1 if the directory is over the size limit."""
    shipped = sorted(p.name for p in out.iterdir() if p.is_file())
    size = _directory_bytes(out, shipped)
    settings: Dict[str, object] = training["settings"]  # type: ignore[assignment]
    print(format_report(report))
    print()
    print("summary")
    print("-" * 60)
    print(f"{'parameters':<34}{int(training['parameters']):,} "  # type: ignore[call-overload]
          f"({(out / WEIGHTS_FILE).stat().st_size / 2**20:.1f} MB fp32)")
    print(f"{'data generation / loading':<34}{float(training['data_seconds']) / 60:.1f} min")  # type: ignore[arg-type]
    print(f"{'training (' + str(settings['steps']) + ' steps)':<34}{float(training['train_seconds']) / 60:.1f} min")  # type: ignore[arg-type]
    print(f"{'export, INT8, evaluation':<34}{float(training['packaging_seconds']) / 60:.1f} min")  # type: ignore[arg-type]
    print(f"{'total wall time':<34}{float(training['total_seconds']) / 60:.1f} min")  # type: ignore[arg-type]
    print(f"{'final loss (mean of last 100)':<34}{float(training['final_loss_mean_last_100']):.4f}")  # type: ignore[arg-type]
    for name, value in training["parity_max_abs_error"].items():  # type: ignore[union-attr]
        print(f"{'parity ' + name:<34}{value:.2e}")
    print(f"{'INT8 shipped':<34}{'yes' if training['int8_shipped'] else 'no'} "
          f"(success drop {float(training['int8_success_drop_points']):+.1f} points)")  # type: ignore[arg-type]
    print(f"{'shipped size':<34}{size / 2**20:.1f} MB in {len(shipped)} files ({', '.join(shipped)})")
    if size > SHIP_LIMIT_BYTES:
        print(f"WARNING: shipped size exceeds {SHIP_LIMIT_BYTES / 2**20:.0f} MB", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    defaults = TrainSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models/tiny"))
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--layouts", type=int, default=defaults.layouts)
    parser.add_argument("--tasks-per-layout", type=int, default=defaults.tasks_per_layout)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--trajectory-weight", type=float, default=defaults.trajectory_weight)
    parser.add_argument("--scrambled-command-fraction", type=float, default=defaults.scrambled_command_fraction,
                        help="share of each batch whose command is scrambled, paired with a random other task's chunk")
    parser.add_argument("--replan-fraction", type=float, default=defaults.replan_fraction,
                        help="share of the tasks that start part-way to the target, as a closed loop asks from")
    parser.add_argument("--workers", type=int, default=defaults.threads,
                        help="processes that generate the training set (when it is not cached)")
    parser.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                        help="bf16: autocast matmuls (float32 weights; fast on CPUs with AVX512-BF16 or AMX); "
                             "fp32: everything in float32 (use it on CPUs without native bf16)")
    parser.add_argument("--device", default=defaults.device,
                        help="torch device for training (the shipped policy is trained on cpu)")
    parser.add_argument("--eval-scenes", type=int, default=200)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/vla_synthetic_cache"))
    redo = parser.add_mutually_exclusive_group()
    redo.add_argument("--repackage", action="store_true",
                      help="skip training: re-export, re-quantise and re-evaluate <out>/policy.safetensors")
    redo.add_argument("--reevaluate", action="store_true",
                      help="skip training and export: re-evaluate <out>'s engines, rewrite its manifest keys, "
                           "eval.json and model card (after a change to evaluation or the served confidence)")
    args = parser.parse_args(argv)
    torch.set_num_threads(defaults.threads)
    cfg: VlaConfig = tiny()
    if args.repackage or args.reevaluate:
        training = json.loads((args.out / TRAINING_FILE).read_text())
        if args.repackage:
            report = ship_model_dir(load_policy(args.out / WEIGHTS_FILE, cfg), args.out, training, args.eval_scenes)
        else:
            recorded = load_manifest(args.out, verify_checksums=False).engines
            engines = {precision: {name: f.path.name for name, f in files.items()} for precision, files in recorded.items()}
            quantization = {precision: files[VISION].quantization for precision, files in recorded.items()
                            if files[VISION].quantization}
            report = record_evaluation(args.out, cfg, engines, training, args.eval_scenes, quantization=quantization)
        return print_summary(args.out, training, report)

    settings = TrainSettings(seed=args.seed, layouts=args.layouts, tasks_per_layout=args.tasks_per_layout,
                             steps=args.steps, batch=args.batch, lr=args.lr, trajectory_weight=args.trajectory_weight,
                             scrambled_command_fraction=args.scrambled_command_fraction,
                             replan_fraction=args.replan_fraction,
                             device=args.device, precision=args.precision)
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    data = load_or_generate(settings.layouts, settings.tasks_per_layout, args.cache_dir, args.workers,
                            settings.replan_fraction)
    data_seconds = time.perf_counter() - started
    _log(f"training set: {len(data)} tasks over {data.images.shape[0]} layouts, "
         f"{100 * data.slow.mean():.0f}% with a pole near the path ({data_seconds:.0f} s)")

    policy = build_policy(cfg)
    _log(f"tiny policy: {count_parameters(policy):,} parameters")
    train_start = time.perf_counter()
    losses, _ = train(policy, data, settings)
    train_seconds = time.perf_counter() - train_start
    del data

    args.out.mkdir(parents=True, exist_ok=True)
    plot_losses(losses, args.out / LOSS_CURVE_FILE)
    training: Dict[str, object] = {
        "settings": {f.name: getattr(settings, f.name) for f in fields(settings)},
        "data_seconds": data_seconds,
        "train_seconds": train_seconds,
        "final_loss_mean_last_100": float(np.mean(losses[-100:])),
    }
    report = ship_model_dir(policy, args.out, training, args.eval_scenes)
    return print_summary(args.out, training, report)


if __name__ == "__main__":
    sys.exit(main())
