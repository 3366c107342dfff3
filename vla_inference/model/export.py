"""Export a ``VlaPolicy`` to the two ONNX engines of ``engine_spec`` and write the model directory.

Both engines get the spec's input/output names, a dynamic ``batch`` axis and opset ``OPSET``;
weights go to an external data file when the model would pass protobuf's 2 GB limit. Random
weights work as well as trained ones, so tests can make a small model directory in seconds::

    python -m vla_inference.model.export --preset tiny --out /tmp/tiny-random            # random
    python -m vla_inference.model.export --weights models/tiny/policy.safetensors --out DIR
    python -m vla_inference.model.export --lerobot CHECKPOINT_DIR --out DIR              # a pi0.5

A LeRobot pi0.5 checkpoint exports to engines plus a manifest that carries its robot interface
(camera order, state and action sizes, normalisation) and a copy of its tokenizer; its weights stay
in the checkpoint, which the torch backend serves directly.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import warnings
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch

from vla_inference.model.pi05 import load_pi05_policy
from vla_inference.model.policy import VlaPolicy, build_policy, load_policy, save_policy
from vla_inference.model.quantize import qdq_record, quantize_qdq
from vla_inference.spec.config import VlaConfig, get_preset
from vla_inference.spec.engine_spec import ACTION_EXPERT, VISION, EngineSpec, engine_specs
from vla_inference.spec.lerobot_checkpoint import read_checkpoint
from vla_inference.spec.manifest import write_manifest

logger = logging.getLogger(__name__)

OPSET = 18
PROTOBUF_LIMIT_BYTES = 2 * 1024**3
ENGINE_FILES = {VISION: "vision.onnx", ACTION_EXPERT: "action_expert.onnx"}
WEIGHTS_FILE = "policy.safetensors"
EXAMPLE_BATCH = 2

_TORCH_DTYPES = {"float32": torch.float32, "int64": torch.int64, "bool": torch.bool}


def example_inputs(spec: EngineSpec, batch: int = EXAMPLE_BATCH, seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """Valid example tensors for ``spec`` (the tracer needs real values; masks mostly True)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for tensor in spec.inputs:
        shape = tensor.concrete_shape(batch)
        if tensor.dtype == "bool":
            tensors.append(torch.rand(shape, generator=generator) < 0.8)
        elif tensor.dtype == "int64":
            tensors.append(torch.randint(1, 200, shape, generator=generator))
        else:
            tensors.append(torch.rand(shape, generator=generator))
    return tuple(tensors)


def _dynamic_batch(spec: EngineSpec) -> Dict[str, Dict[int, torch.export.Dim]]:
    batch = torch.export.Dim("batch", min=1, max=1024)
    return {t.name: {0: batch} for t in spec.inputs}


def _parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_engine(module: torch.nn.Module, spec: EngineSpec, path: Path, opset: int = OPSET) -> Path:
    """Export one engine with the spec's names and a dynamic batch axis, then check the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    large = _parameter_bytes(module) >= PROTOBUF_LIMIT_BYTES
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            example_inputs(spec),
            dynamo=True,
            opset_version=opset,
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_shapes=_dynamic_batch(spec),
            external_data=large,
            optimize=True,
            verbose=False,
        )
    program.save(str(path), external_data=large)
    onnx.checker.check_model(str(path) if large else onnx.load(str(path)), full_check=False)
    _check_io_names(path, spec)
    return path


def _check_io_names(path: Path, spec: EngineSpec) -> None:
    model = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [t.name for t in spec.inputs] or outputs != [t.name for t in spec.outputs]:
        raise RuntimeError(f"{path}: exported I/O {inputs} -> {outputs} differ from the spec {spec.name}")


def export_engines(policy: VlaPolicy, out_dir: Path, suffix: str = ".onnx", opset: int = OPSET) -> Dict[str, str]:
    """Export both engines into ``out_dir``; returns {engine name: file name}."""
    out_dir = Path(out_dir)
    specs = engine_specs(policy.cfg)
    files = {}
    for name, module in ((VISION, policy.vision_engine), (ACTION_EXPERT, policy.action_expert)):
        filename = ENGINE_FILES[name].replace(".onnx", suffix)
        export_engine(module, specs[name], out_dir / filename, opset)
        files[name] = filename
    return files


def export_model_dir(policy: VlaPolicy, cfg: VlaConfig, out_dir: Path, save_weights: bool = True,
                     int8: bool = False, extra: Optional[Mapping[str, object]] = None) -> Path:
    """Write the fp32 engines (and INT8 Q/DQ ones if asked), the weights and ``manifest.json``.

    Returns the manifest path. Works with random weights: the quick way to get a model directory.
    """
    if policy.cfg != cfg:
        raise ValueError("policy was built for a different config than the one given")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32_files = export_engines(policy, out_dir)
    engines: Dict[str, Mapping[str, str]] = {"fp32": fp32_files}
    quantization: Dict[str, Mapping[str, object]] = {}
    if int8:
        engines["int8"], quantization["int8"] = quantize_int8(out_dir, fp32_files, cfg)
    weights = None
    if save_weights:
        save_policy(policy, out_dir / WEIGHTS_FILE)
        weights = WEIGHTS_FILE
    return write_manifest(out_dir, cfg, engines, weights_file=weights, extra=extra, quantization=quantization)


def quantize_int8(out_dir: Path, files: Mapping[str, str], cfg: VlaConfig) -> Tuple[Dict[str, str], Dict[str, object]]:
    """INT8 Q/DQ engines beside ``files`` (``model.quantize``, calibrated on synthetic scenes), and
    the manifest's ``quantization`` record for them."""
    result = quantize_qdq(out_dir, files, cfg, "int8")
    return result.files, qdq_record("int8", result)


def export_lerobot_checkpoint(checkpoint_dir: Path, out_dir: Path, vision_num_heads: Optional[int] = None,
                              tokenizer_path: Optional[Path] = None) -> Path:
    """Export a LeRobot pi0.5 checkpoint's engines; the manifest records its ``policy_io`` and the
    tokenizer is copied beside the engines (with the JSON files that name its special tokens)."""
    checkpoint = read_checkpoint(checkpoint_dir, vision_num_heads, tokenizer_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    policy = load_pi05_policy(checkpoint)
    files = export_engines(policy, out_dir)
    engines: Dict[str, Mapping[str, str]] = {"fp32": files}
    assert checkpoint.io.tokenizer_file is not None
    source = Path(checkpoint.io.tokenizer_file)
    source = source if source.is_absolute() else checkpoint.model_dir / source
    tokenizer_dir = out_dir / "tokenizer"
    tokenizer_dir.mkdir(exist_ok=True)
    for sidecar in [source, *source.parent.glob("*.json")]:
        shutil.copy2(sidecar, tokenizer_dir / sidecar.name)
    io = dataclasses.replace(checkpoint.io, tokenizer_file=f"tokenizer/{source.name}")
    extra = {"policy_io": io.to_dict(), "source": {"lerobot_checkpoint": str(checkpoint.model_dir),
                                                    "layout": checkpoint.layout}}
    return write_manifest(out_dir, checkpoint.config, engines, extra=extra)


def random_feeds(cfg: VlaConfig, batch: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """Valid numpy feeds for the vision engine (for smoke tests of an exported directory)."""
    spec = engine_specs(cfg)[VISION]
    return {t.name: x.numpy() for t, x in zip(spec.inputs, example_inputs(spec, batch, seed))}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="config preset (ignored with --weights' manifest)")
    parser.add_argument("--weights", type=Path, help="policy.safetensors to export (default: random weights)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--int8", action="store_true",
                        help="also write INT8 Q/DQ engines, calibrated on synthetic scenes (this project's policies)")
    parser.add_argument("--lerobot", type=Path, help="a LeRobot pi0.5 checkpoint directory to export")
    parser.add_argument("--vision-num-heads", type=int, help="--lerobot: SigLIP heads, when not So400m's 72-wide ones")
    parser.add_argument("--tokenizer", type=Path, help="--lerobot: tokenizer file when the checkpoint has none")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.lerobot is not None:
        if args.int8:  # its calibration scenes would need the pi0.5 prompt and state encoding
            parser.error("--int8 calibrates on this project's synthetic scenes; it does not apply to --lerobot")
        manifest = export_lerobot_checkpoint(args.lerobot, args.out, args.vision_num_heads, args.tokenizer)
        print(f"wrote {manifest}")
        return 0
    cfg = get_preset(args.preset)
    if args.weights is not None:
        policy = load_policy(args.weights, cfg)
    else:
        torch.manual_seed(args.seed)
        policy = build_policy(cfg).eval()
    manifest = export_model_dir(policy, cfg, args.out, int8=args.int8)
    print(f"wrote {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
