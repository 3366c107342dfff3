"""LeRobot pi0.5 checkpoint directories, read without torch: what the model is and what it expects.

A directory that ``PI05Policy.save_pretrained`` (and its pre/post-processors) wrote holds::

    config.json                     "type": "pi05", camera/state/action features, variant *names*
    model.safetensors               the weights (keys start with ``model.``)
    policy_preprocessor.json        + ..._normalizer_processor.safetensors   (state statistics)
    policy_postprocessor.json       + ..._unnormalizer_processor.safetensors (action statistics)
    tokenizer.json | tokenizer.model (optional; LeRobot names the hub's PaliGemma tokenizer instead)

``config.json`` names the Gemma variants but not their sizes, so every size is read from the tensor
shapes in the safetensors header (no tensor is loaded here). Shapes cannot tell SigLIP's head count
from its head width: pi0.5's So400m encoder has 72-wide heads (16 of them), which is assumed when the
width divides by 72; otherwise ``vision_num_heads`` must be given. The Gemma head count is 8, as
LeRobot's pi0.5 fixes it.

``KEY_LAYOUTS`` maps the checkpoint's tensor names onto this project's pi0.5 modules
(``vla_inference.model.pi05``) by prefix, one table per LeRobot format (0.4.x, verified numerically
against LeRobot 0.4.4; 0.5.x, by mapping only: same names, see the table's comment); tensors a table
marks unused (the language-model head, the expert's vocabulary head, the final norm of the prefix
model) are left out, and anything neither mapped nor marked unused is an error when the weights load.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from vla_inference.spec.config import BackboneConfig, ExpertConfig, LidarConfig, VisionConfig, VlaConfig
from vla_inference.spec.manifest import Manifest, ModelDirError
from vla_inference.spec.policy_io import DEFAULT_NORM_EPS, Normalization, PolicyIO
from vla_inference.spec.tokenizer import TOKENIZER_FILES

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"
POLICY_TYPE = "pi05"
GEMMA_HEADS = 8  # LeRobot's pi0.5 reshapes attention outputs to 8 heads
SIGLIP_HEAD_DIM = 72  # So400m/14: width 1152, 16 heads
SUPPORTED_PERIODS = (0.004, 4.0)  # the flow-time embedding this implementation computes

_PALIGEMMA = "model.paligemma_with_expert.paligemma."
_EXPERT = "model.paligemma_with_expert.gemma_expert."
_EMBED = _PALIGEMMA + "model.language_model.embed_tokens."


def _layout(tied_head: bool) -> Tuple[Tuple[str, Optional[str]], ...]:
    """(checkpoint prefix, module prefix or None for an unused tensor), first match wins. LeRobot 0.4
    saves the tied vocabulary table once, as ``lm_head``; 0.5 saves both, and only ``embed_tokens``
    is trained (``lm_head`` is read by nothing, so fine-tuning leaves it stale)."""
    return (
        (_PALIGEMMA + "model.vision_tower.vision_model.", "vision_engine.siglip."),
        (_PALIGEMMA + "model.multi_modal_projector.linear.", "vision_engine.projector."),
        (_EMBED, "vision_engine.embed_tokens."),
        (_PALIGEMMA + "lm_head.", "vision_engine.embed_tokens." if tied_head else None),
        (_PALIGEMMA + "model.language_model.norm.", None),
        (_PALIGEMMA + "model.language_model.", "vision_engine.language_model."),
        (_EXPERT + "lm_head.", None),
        (_EXPERT + "model.", "action_expert.gemma."),
        ("model.action_in_proj.", "action_expert.action_in_proj."),
        ("model.action_out_proj.", "action_expert.action_out_proj."),
        ("model.time_mlp_in.", "action_expert.time_mlp_in."),
        ("model.time_mlp_out.", "action_expert.time_mlp_out."),
    )


# Key names are the same in both formats (LeRobot 0.5 with stock transformers 5 renamed none); what
# differs is the tied table above and the prompt: 0.4 pads the normalised state to max_state_dim
# before writing its bins, 0.5 (like openpi) writes only the robot's own state values.
KEY_LAYOUTS: Dict[str, Tuple[Tuple[str, Optional[str]], ...]] = {
    "lerobot-0.4": _layout(tied_head=True),
    "lerobot-0.5": _layout(tied_head=False),
}


class CheckpointError(ModelDirError):
    """A LeRobot checkpoint this loader cannot serve; the message names the file and the field."""


def is_lerobot_pi05(model_dir: Path) -> bool:
    """A directory with a pi0.5 ``config.json`` and ``model.safetensors``."""
    config = Path(model_dir) / CONFIG_FILE
    if not config.is_file() or not (Path(model_dir) / WEIGHTS_FILE).is_file():
        return False
    try:
        return json.loads(config.read_text()).get("type") == POLICY_TYPE
    except ValueError:
        return False


def safetensors_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (8-byte length, then JSON), reading no data."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def map_key(name: str, layout: str) -> Tuple[bool, Optional[str]]:
    """(matched, module name or None when unused) for a checkpoint tensor name under ``layout``."""
    for prefix, target in KEY_LAYOUTS[layout]:
        if name.startswith(prefix):
            return True, None if target is None else target + name[len(prefix):]
    return False, None


def detect_layout(names: Sequence[str]) -> str:
    """``lerobot-0.5`` when the vocabulary table is saved under its own name, else ``lerobot-0.4``."""
    if not any(name.startswith(_PALIGEMMA) for name in names):
        raise CheckpointError(f"tensor names match no known LeRobot pi0.5 layout ({sorted(KEY_LAYOUTS)}); "
                              f"first names: {sorted(names)[:3]}")
    return "lerobot-0.5" if any(name.startswith(_EMBED) for name in names) else "lerobot-0.4"


def _count(shapes: Mapping[str, Tuple[int, ...]], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for name in shapes if (m := regex.match(name))})


def _shape(shapes: Mapping[str, Tuple[int, ...]], name: str, path: Path) -> Tuple[int, ...]:
    if name not in shapes:
        raise CheckpointError(f"{path}: tensor {name!r} not found")
    return shapes[name]


def infer_config(raw: Mapping[str, object], shapes: Mapping[str, Tuple[int, ...]], layout: str, path: Path,
                 vision_num_heads: Optional[int] = None) -> VlaConfig:
    """The pi05-architecture ``VlaConfig`` that ``raw`` (config.json) and the tensor shapes of ``layout`` describe."""
    mapped = {}
    for name, shape in shapes.items():
        matched, target = map_key(name, layout)
        if matched and target is not None:
            mapped[target] = shape
    vision = "vision_engine.siglip."
    patch_weight = _shape(mapped, vision + "embeddings.patch_embedding.weight", path)
    width, _, patch, _ = patch_weight
    tokens = _shape(mapped, vision + "embeddings.position_embedding.weight", path)[0]
    side = int(round(tokens ** 0.5))
    if side * side != tokens:
        raise CheckpointError(f"{path}: {tokens} SigLIP positions do not form a square grid")
    if vision_num_heads is None:
        if width % SIGLIP_HEAD_DIM:
            raise CheckpointError(f"{path}: SigLIP width {width} is not a multiple of So400m's head width "
                                  f"{SIGLIP_HEAD_DIM}; give vision_num_heads")
        vision_num_heads = width // SIGLIP_HEAD_DIM
    lm, expert = "vision_engine.language_model.", "action_expert.gemma."
    q_out, lm_width = _shape(mapped, lm + "layers.0.self_attn.q_proj.weight", path)
    k_out = _shape(mapped, lm + "layers.0.self_attn.k_proj.weight", path)[0]
    if q_out % GEMMA_HEADS:
        raise CheckpointError(f"{path}: query width {q_out} is not {GEMMA_HEADS} heads")
    head_dim = q_out // GEMMA_HEADS
    depth = _count(mapped, re.escape(lm) + r"layers\.(\d+)\.")
    expert_q, expert_width = _shape(mapped, expert + "layers.0.self_attn.q_proj.weight", path)
    expert_k = _shape(mapped, expert + "layers.0.self_attn.k_proj.weight", path)[0]
    expert_depth = _count(mapped, re.escape(expert) + r"layers\.(\d+)\.")
    if (expert_q, expert_k, expert_depth) != (q_out, k_out, depth):
        raise CheckpointError(f"{path}: the action expert's attention ({expert_depth} layers, q {expert_q}, "
                              f"kv {expert_k}) must match the prefix model's ({depth}, {q_out}, {k_out})")
    action_width = _shape(mapped, "action_expert.action_in_proj.weight", path)[1]
    features = dict(raw.get("input_features", {}))  # type: ignore[arg-type]
    cameras = [k for k, v in features.items() if v.get("type") == "VISUAL"]
    periods = (float(raw.get("min_period", 0.004)), float(raw.get("max_period", 4.0)))  # type: ignore[arg-type]
    if not np.allclose(periods, SUPPORTED_PERIODS):
        raise CheckpointError(f"{path}: flow-time periods {periods}, this implementation computes {SUPPORTED_PERIODS}")
    max_action_dim = int(raw.get("max_action_dim", action_width))  # type: ignore[arg-type]
    if max_action_dim != action_width:
        raise CheckpointError(f"{path}: max_action_dim {max_action_dim}, but action_in_proj takes {action_width}")
    return VlaConfig(
        preset="lerobot-pi05",
        architecture="pi05",
        max_cameras=len(cameras) + int(raw.get("empty_cameras", 0)),  # type: ignore[arg-type]
        text_max_len=int(raw.get("tokenizer_max_length", 200)),  # type: ignore[arg-type]
        text_vocab_size=_shape(mapped, "vision_engine.embed_tokens.weight", path)[0],
        state_dim=int(raw.get("max_state_dim", 32)),  # type: ignore[arg-type]
        action_horizon=int(raw.get("chunk_size", 50)),  # type: ignore[arg-type]
        action_dim=action_width,
        vision=VisionConfig(image_size=side * patch, patch_size=patch, width=width,
                            depth=_count(mapped, re.escape(vision) + r"encoder\.layers\.(\d+)\."),
                            num_heads=vision_num_heads,
                            mlp_dim=_shape(mapped, vision + "encoder.layers.0.mlp.fc1.weight", path)[0]),
        lidar=LidarConfig(),
        backbone=BackboneConfig(width=lm_width, depth=depth, num_heads=GEMMA_HEADS, num_kv_heads=k_out // head_dim,
                                head_dim=head_dim, mlp_dim=_shape(mapped, lm + "layers.0.mlp.gate_proj.weight", path)[0]),
        expert=ExpertConfig(width=expert_width, mlp_dim=_shape(mapped, expert + "layers.0.mlp.gate_proj.weight", path)[0]),
    )


def _processor_stats(model_dir: Path, pipeline_file: str, step_name: str) -> Tuple[Dict[str, str], float,
                                                                                       Dict[str, np.ndarray]]:
    """(norm_map, eps, statistics) of the named step of a saved LeRobot processor pipeline."""
    from safetensors.numpy import load_file

    path = model_dir / pipeline_file
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (the normalisation statistics live in the processor files "
                              "LeRobot saves beside the policy)")
    steps = json.loads(path.read_text()).get("steps", [])
    for step in steps:
        if step.get("registry_name") == step_name:
            config = step.get("config", {})
            state_file = step.get("state_file")
            if not state_file or not (model_dir / state_file).is_file():
                raise CheckpointError(f"{path}: step {step_name!r} has no statistics file ({state_file!r})")
            stats = {k: v.astype(np.float32) for k, v in load_file(str(model_dir / state_file)).items()}
            return dict(config.get("norm_map", {})), float(config.get("eps", DEFAULT_NORM_EPS)), stats
    raise CheckpointError(f"{path}: no {step_name!r} step")


def _normalization(feature: str, kind: str, norm_map: Mapping[str, str], eps: float,
                   stats: Mapping[str, np.ndarray], dim: int, path: Path) -> Normalization:
    mode = norm_map.get(kind, "IDENTITY")
    own = {key.split(".")[-1]: value for key, value in stats.items() if key.rsplit(".", 1)[0] == feature}
    try:
        norm = Normalization(mode, own, eps)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {feature}: {exc}") from exc
    bad = {k: v.shape for k, v in own.items() if v.shape != (dim,)}
    if mode != "IDENTITY" and bad:
        raise CheckpointError(f"{path}: {feature} statistics {bad}, expected shape ({dim},)")
    return norm


def find_tokenizer(model_dir: Path) -> Optional[Path]:
    """The checkpoint's own tokenizer file: in the directory, then one folder down (``tokenizer/``...)."""
    for pattern in TOKENIZER_FILES + tuple(f"*/{name}" for name in TOKENIZER_FILES):
        found = sorted(model_dir.glob(pattern))
        if found:
            return found[0]
    return None


@dataclass(frozen=True)
class LeRobotCheckpoint:
    """What a served pi0.5 checkpoint is: the model config, the robot interface, and its files."""

    model_dir: Path
    config: VlaConfig
    io: PolicyIO
    layout: str
    raw_config: Mapping[str, object]

    @property
    def weights_path(self) -> Path:
        return self.model_dir / WEIGHTS_FILE

    def manifest(self) -> Manifest:
        """The in-memory manifest a backend reads: no ONNX engine (only the torch backend loads
        weights directly; ``vla-export`` writes engines and a manifest of its own)."""
        raw: Dict[str, object] = {
            "format_version": 1,
            "preset": self.config.preset,
            "config": self.config.to_dict(),
            "engines": {},
            "weights": {"file": WEIGHTS_FILE, "format": self.layout},
            "policy_io": self.io.to_dict(),
            "source": {"lerobot_config": CONFIG_FILE, "policy_type": POLICY_TYPE},
        }
        return Manifest(self.model_dir, self.config, {}, raw)


def read_checkpoint(model_dir: Path, vision_num_heads: Optional[int] = None,
                    tokenizer_path: Optional[Path] = None) -> LeRobotCheckpoint:
    """Read a LeRobot pi0.5 directory (config, tensor shapes, statistics, tokenizer); loads no weights.
    ``tokenizer_path`` is used when the directory has no tokenizer file of its own."""
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    if not is_lerobot_pi05(model_dir):
        raise CheckpointError(f"{model_dir}: not a LeRobot pi0.5 checkpoint ({CONFIG_FILE} with \"type\": "
                              f"\"{POLICY_TYPE}\" and {WEIGHTS_FILE})")
    raw = json.loads(config_path.read_text())
    shapes = safetensors_shapes(model_dir / WEIGHTS_FILE)
    layout = detect_layout(list(shapes))
    cfg = infer_config(raw, shapes, layout, model_dir / WEIGHTS_FILE, vision_num_heads)
    inputs, outputs = raw.get("input_features", {}), raw.get("output_features", {})
    cameras = tuple(k for k, v in inputs.items() if v.get("type") == "VISUAL")
    states = [v["shape"][0] for v in inputs.values() if v.get("type") == "STATE"]
    actions = [v["shape"][0] for v in outputs.values() if v.get("type") == "ACTION"]
    if len(states) != 1 or len(actions) != 1:
        raise CheckpointError(f"{config_path}: expected one STATE input and one ACTION output, "
                              f"found {len(states)} and {len(actions)}")
    state_dim, action_dim = int(states[0]), int(actions[0])
    if raw.get("use_relative_actions"):
        raise CheckpointError(f"{config_path}: use_relative_actions is true; this server un-normalises absolute "
                              "actions only (LeRobot 0.5.1's relative-action processors are not implemented)")
    if state_dim > cfg.state_dim or action_dim > cfg.action_dim:
        raise CheckpointError(f"{config_path}: state {state_dim} / action {action_dim} exceed max_state_dim "
                              f"{cfg.state_dim} / max_action_dim {cfg.action_dim}")
    norm_map, eps, stats = _processor_stats(model_dir, PREPROCESSOR_FILE, "normalizer_processor")
    post_map, post_eps, post_stats = _processor_stats(model_dir, POSTPROCESSOR_FILE, "unnormalizer_processor")
    state_key = next(k for k, v in inputs.items() if v.get("type") == "STATE")
    action_key = next(k for k, v in outputs.items() if v.get("type") == "ACTION")
    tokenizer = find_tokenizer(model_dir)
    if tokenizer is None and tokenizer_path is not None:
        tokenizer = Path(tokenizer_path)
        if not tokenizer.exists():
            raise CheckpointError(f"tokenizer_path {tokenizer}: not found")
    if tokenizer is None:
        raise CheckpointError(f"{model_dir}: no tokenizer file ({' or '.join(TOKENIZER_FILES)}) in the checkpoint; "
                              "set tokenizer_path to PaliGemma's tokenizer (LeRobot downloads "
                              "google/paligemma-3b-pt-224's; this node never downloads)")
    io = PolicyIO(
        kind="pi05",
        camera_keys=cameras,
        state_dim=state_dim,
        action_dim=action_dim,
        state_norm=_normalization(state_key, "STATE", norm_map, eps, stats, state_dim, model_dir / PREPROCESSOR_FILE),
        action_norm=_normalization(action_key, "ACTION", post_map, post_eps, post_stats, action_dim,
                                   model_dir / POSTPROCESSOR_FILE),
        tokenizer_file=str(tokenizer.relative_to(model_dir)) if tokenizer.is_relative_to(model_dir) else str(tokenizer),
        prompt_state_width=cfg.state_dim if layout == "lerobot-0.4" else None,
    )
    return LeRobotCheckpoint(model_dir, cfg, io, layout, raw)
