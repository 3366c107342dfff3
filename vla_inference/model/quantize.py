"""Static Q/DQ quantisation of the two engines (INT8, FP8), calibrated on synthetic scenes.

TensorRT runs INT8 or FP8 kernels only where the ONNX graph says so with QuantizeLinear /
DequantizeLinear pairs (explicit quantisation; its implicit-quantisation calibrators are deprecated).
ONNX Runtime runs the same file on the CPU (it fuses each DQ -> MatMul into an integer kernel),
which is how the accuracy gate (``lab.quant_gate``) judges here what a Jetson would serve.

What is quantised, and why so:

* the matrix products with constant weights (MatMul, Gemm) and the patch/LiDAR convolutions; the
  attention products of two activations stay float, as their softmax inputs are the most sensitive;
* only their inputs: no Q/DQ on outputs (NVIDIA's recommended placement: TensorRT fuses the DQ of
  an input into the kernel, and ONNX Runtime then runs MatMulIntegerToFloat);
* signed and symmetric, activations per tensor and weights per output channel: TensorRT takes no
  other INT8 scheme (zero point 0);
* two sensitive parts of the vision engine stay in float (``float_nodes``): the prefix backbone
  (downstream of the text tokens: the layers that produce the keys/values the expert reads; with
  ONNX Runtime's dynamic INT8 it cost the shipped policy 6 points of task success), and the state
  embedding: the state holds the end effector's position in metres, where one per-tensor INT8 step
  is about 5 mm, and quantising it took the closed loop from 98 % to 90 % of scenes reached (50
  held-out scenes, answers 0 rows after the request; ``lab.quant_gate --ablation`` measures it).

INT8 weights use 7 bits (``reduce_range``): on an x86 CPU without VNNI (AVX2 only) ONNX Runtime adds
pairs of u8 x s8 products in int16, which saturates with full-range weights (the shipped policy's
earlier dynamic-INT8 engines with 8-bit weights reached 59.0 % success on a Zen 3, 92.0 % on a Zen 5
with VNNI, fp32 92.5 % on both); TensorRT reads the 7-bit scales like any other.

Calibration scenes come from their own seed range (``CALIBRATION_SEED_BASE``), apart from the
training layouts and the held-out evaluation scenes; half start part-way to the target, as a closed
loop asks. The expert is calibrated on what it sees when served: the inputs of every step of the
fp32 Euler loop.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import onnx

from vla_inference.spec.config import VlaConfig
from vla_inference.spec.engine_spec import ACTION_EXPERT, VISION
from vla_inference.spec.flow import flow_schedule
from vla_inference.spec.manifest import QDQ_FORMAT, QDQ_TYPES
from vla_inference.spec.observation import vision_feeds
from vla_inference.synthetic.dataset import EVAL_SEED_BASE, make_observation
from vla_inference.synthetic.scene import generate_scene, replanned_start

LOG = logging.getLogger(__name__)

CALIBRATION_SEED_BASE = 500_000  # above every training layout, below the held-out scenes
CALIBRATION_SCENES = 48
CALIBRATION_BATCH = 8
CALIBRATION_STEPS = 10
QDQ_PRECISIONS = tuple(QDQ_TYPES)
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class QdqResult:
    """Files written per engine and how many nodes each quantised / kept in float."""

    files: Dict[str, str]
    quantized_nodes: Dict[str, int]
    float_nodes: Dict[str, int]


def prefix_backbone_nodes(model: onnx.ModelProto, source: str = "text_tokens") -> List[str]:
    """MatMul/Gemm nodes downstream of ``source``: in the vision engine, the prefix backbone that
    produces the keys/values (the ViT and the modality embeddings are upstream of the text)."""
    reached = {source}
    names = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if any(i in reached for i in node.input):
            reached.update(node.output)
            if node.op_type in ("MatMul", "Gemm"):
                names.append(node.name)
    return names


def state_nodes(model: onnx.ModelProto, state_input: str = "state") -> List[str]:
    """Nodes that read the robot state straight from the graph input (the state token's embedding)."""
    return [n.name for n in model.graph.node if state_input in n.input]


def float_nodes(model: onnx.ModelProto, engine: str) -> List[str]:
    """The sensitive weighted nodes kept in float: in the vision engine, the prefix backbone and the
    state embedding (see the module docstring); none in the expert."""
    if engine != VISION:
        return []
    return prefix_backbone_nodes(model) + state_nodes(model)


def _weighted_nodes(model: onnx.ModelProto) -> List[str]:
    """Names of the MatMul/Gemm/Conv nodes whose second input is a constant (an initializer)."""
    constants = {init.name for init in model.graph.initializer}
    constants.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and len(n.input) > 1
            and n.input[1] in constants]


def calibration_scenes(count: int, seed_base: int = CALIBRATION_SEED_BASE) -> list:
    """``count`` scenes from the calibration seed range; every second one starts part-way along."""
    if seed_base + count > EVAL_SEED_BASE:
        raise ValueError(f"calibration seeds must stay below the held-out base {EVAL_SEED_BASE}")
    scenes = []
    for i in range(count):
        scene = generate_scene(seed_base + i)
        if i % 2:
            scene = replanned_start(scene, np.random.default_rng([seed_base + i, 11]))
        scenes.append(scene)
    return scenes


def calibration_feeds(cfg: VlaConfig, fp32_dir: Path, fp32_files: Mapping[str, str], count: int = CALIBRATION_SCENES,
                      batch: int = CALIBRATION_BATCH, steps: int = CALIBRATION_STEPS,
                      seed_base: int = CALIBRATION_SEED_BASE) -> Dict[str, List[Dict[str, np.ndarray]]]:
    """Feed batches per engine: vision on 1-3 cameras with and without LiDAR, the expert on the
    inputs of every step of the fp32 Euler loop from those prefixes."""
    import onnxruntime as ort

    scenes = calibration_scenes(count, seed_base)
    observations = [make_observation(s, 1 + i % 3, i % 5 != 4, cfg.vision.image_size) for i, s in enumerate(scenes)]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = {name: ort.InferenceSession(str(Path(fp32_dir) / f), options, providers=["CPUExecutionProvider"])
                for name, f in fp32_files.items()}
    times, dt = flow_schedule(steps)
    rng = np.random.default_rng(seed_base)
    out: Dict[str, List[Dict[str, np.ndarray]]] = {VISION: [], ACTION_EXPERT: []}
    for start in range(0, count, batch):
        feeds = vision_feeds(observations[start:start + batch], cfg)
        out[VISION].append(feeds)
        prefix_kv, prefix_mask = sessions[VISION].run(["prefix_kv", "prefix_mask"], feeds)
        n = prefix_kv.shape[0]
        x = rng.standard_normal((n, cfg.action_horizon, cfg.action_dim)).astype(np.float32)
        for t in times:
            expert = {"noisy_actions": x, "time": np.full((n,), t, np.float32), "prefix_kv": prefix_kv,
                      "prefix_mask": prefix_mask}
            out[ACTION_EXPERT].append(expert)
            x = x + sessions[ACTION_EXPERT].run(["velocity"], expert)[0] * dt
    return out


class _FeedReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: Sequence[Dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[Dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._feeds, None)


def quantize_qdq(out_dir: Path, fp32_files: Mapping[str, str], cfg: VlaConfig, precision: str = "int8",
                 calibration: Optional[Dict[str, List[Dict[str, np.ndarray]]]] = None,
                 keep_float: Optional[Mapping[str, Sequence[str]]] = None) -> QdqResult:
    """Write ``<engine>.<precision>.onnx`` beside the fp32 files, with Q/DQ on the weighted ops'
    inputs, calibrated on ``calibration`` (default: ``calibration_feeds``). ``keep_float``: node
    names per engine to leave in float instead of ``float_nodes`` (what the gate's ablation varies)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if precision not in QDQ_PRECISIONS:
        raise ValueError(f"precision: expected one of {QDQ_PRECISIONS}, received {precision!r}")
    out_dir = Path(out_dir)
    if calibration is None:
        calibration = calibration_feeds(cfg, out_dir, fp32_files)
    int8 = precision == "int8"
    quant_type = QuantType.QInt8 if int8 else QuantType.QFLOAT8E4M3FN
    # ONNX Runtime calibrates float8 scales only from the distribution of each tensor
    method = CalibrationMethod.MinMax if int8 else CalibrationMethod.Distribution
    files, quantized, kept = {}, {}, {}
    for name, filename in fp32_files.items():
        source = out_dir / filename
        target = filename.replace(".onnx", f".{precision}.onnx")
        model = onnx.load(str(source))
        weighted = _weighted_nodes(model)
        keep = set(float_nodes(model, name) if keep_float is None else keep_float.get(name, ()))
        include = [n for n in weighted if n not in keep]
        quantize_static(
            source, out_dir / target, _FeedReader(calibration[name]),  # type: ignore[arg-type]
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=include,
            per_channel=True, reduce_range=int8,
            activation_type=quant_type, weight_type=quant_type, calibrate_method=method,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "MatMulConstBOnly": True,
                # one Q/DQ pair per consumer: ONNX Runtime fuses DQ -> MatMul only when the DQ has one
                # (its sessions of Q/DQ graphs keep CSE from merging them again: onnxruntime_backend)
                "DedicatedQDQPair": True,
                "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
                "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
            },
        )
        onnx.checker.check_model(onnx.load(str(out_dir / target)))
        files[name], quantized[name], kept[name] = target, len(include), len(weighted) - len(include)
        LOG.info("%s: %d weighted nodes quantised to %s, %d kept in float", target, len(include), precision,
                 len(weighted) - len(include))
    return QdqResult(files, quantized, kept)


def qdq_record(precision: str, result: QdqResult, calibration_scenes: int = CALIBRATION_SCENES) -> Dict[str, object]:
    """The manifest's ``quantization`` record of a ``quantize_qdq`` result (``spec.manifest``)."""
    import onnxruntime

    int8 = precision == "int8"
    return {
        "format": QDQ_FORMAT,
        "type": QDQ_TYPES[precision],
        "tool": f"onnxruntime {onnxruntime.__version__} quantize_static",
        "calibration": {"method": "MinMax" if int8 else "Distribution", "scenes": calibration_scenes,
                        "seed_base": CALIBRATION_SEED_BASE},
        "weights": "per output channel, symmetric" + (", 7 bits" if int8 else ""),
        "activations": "per tensor, symmetric",
        "quantized_nodes": dict(result.quantized_nodes),
        "float_nodes": dict(result.float_nodes),
    }
