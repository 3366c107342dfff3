"""Q/DQ quantisation (``model.quantize``): graphs TensorRT can build INT8/FP8 from, recorded in the
manifest, and INT8 engines that end where fp32 ends on ONNX Runtime.

A reduced gate: the full one (``lab.quant_gate``: 200 scenes, closed loop) is a lab command whose
record is ``docs/benchmarks/quant_gate_tiny_int8.json``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from test_runtime_support import copy_fp32_engines

from vla_inference.lab.chunk_numerics import path_errors
from vla_inference.lab.evaluate import build_eval_set, score
from vla_inference.lab.quant_gate import gate, ship_qdq
from vla_inference.lab.sampler import EngineSampler, sample_in_batches
from vla_inference.model.quantize import (
    calibration_feeds,
    calibration_scenes,
    float_nodes,
    qdq_record,
    quantize_qdq,
)
from vla_inference.spec.engine_spec import ACTION_EXPERT, ENGINES, VISION
from vla_inference.spec.manifest import load_manifest, write_manifest
from vla_inference.synthetic.dataset import EVAL_SEED_BASE

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "tiny"
CALIBRATION = 8  # scenes: one vision batch and ten expert steps
SCENES = 24


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory):
    """The shipped policy's fp32 engines, quantised to INT8 Q/DQ in a scratch model directory."""
    manifest = load_manifest(MODEL_DIR)
    out = tmp_path_factory.mktemp("qdq")
    fp32 = copy_fp32_engines(manifest, out)
    calibration = calibration_feeds(manifest.config, out, fp32, CALIBRATION)
    result = quantize_qdq(out, fp32, manifest.config, "int8", calibration)
    write_manifest(out, manifest.config, {"fp32": fp32, "int8": result.files},
                   quantization={"int8": qdq_record("int8", result, CALIBRATION)})
    return load_manifest(out), result, calibration


def _producers(model: onnx.ModelProto) -> dict:
    return {output: node for node in model.graph.node for output in node.output}


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def test_calibration_scenes_are_neither_training_nor_held_out() -> None:
    scenes = calibration_scenes(4)
    assert len(scenes) == 4 and scenes[0].ee_start != scenes[1].ee_start
    with pytest.raises(ValueError, match="held-out"):
        calibration_scenes(10, seed_base=EVAL_SEED_BASE - 5)


def test_weighted_inputs_go_through_symmetric_int8_qdq_and_sensitive_nodes_stay_float(quantized) -> None:
    """What TensorRT's explicit quantization takes: int8, zero point 0, per-tensor activations."""
    manifest, result, _ = quantized
    for name in ENGINES:
        model = onnx.load(str(manifest.engine("int8", name).path))
        fp32 = onnx.load(str(manifest.engine("fp32", name).path))
        producers = _producers(model)
        kept = set(float_nodes(fp32, name))
        quantized_nodes = 0
        for node in model.graph.node:
            if node.op_type not in ("MatMul", "Gemm", "Conv") or node.name not in {n.name for n in fp32.graph.node}:
                continue
            feeds = [producers.get(i) for i in node.input[:2]]
            dequantized = [f is not None and f.op_type == "DequantizeLinear" for f in feeds]
            if node.name in kept:
                assert not any(dequantized), f"{name}/{node.name} is sensitive and must stay float"
            elif all(dequantized):
                quantized_nodes += 1
                activation, weight = feeds
                assert _constant(model, activation.input[1]).ndim == 0, "activations: one scale per tensor"
                assert _constant(model, weight.input[1]).ndim == 1, "weights: one scale per output channel"
                for dq in feeds:
                    zero_point = _constant(model, dq.input[2])
                    assert zero_point.dtype == np.int8 and not zero_point.any(), "symmetric int8 only"
        assert quantized_nodes == result.quantized_nodes[name] > 0
        assert not any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in model.graph.node)
    assert result.float_nodes == {VISION: 17, ACTION_EXPERT: 0}  # 16 backbone products, the state embedding


def test_the_manifest_records_the_qdq_engines(quantized) -> None:
    manifest, _, _ = quantized
    assert manifest.qdq_precision("int8") and not manifest.qdq_precision("fp8") and not manifest.qdq_precision("fp32")
    record = manifest.engine("int8", VISION).quantization
    assert record["format"] == "qdq" and record["type"] == "int8" and record["calibration"]["scenes"] == CALIBRATION
    assert manifest.engine("int8", VISION).version.startswith("tiny/vision/int8@")


def test_int8_chunks_end_where_fp32_chunks_end_on_onnxruntime(quantized) -> None:
    """A reduced gate on held-out scenes: same success, end points within a centimetre of fp32's."""
    manifest, _, _ = quantized
    eval_set = build_eval_set(manifest.config, SCENES)
    chunks, scores = {}, {}
    for precision in ("fp32", "int8"):
        with EngineSampler(manifest, precision) as sampler:
            chunks[precision] = sample_in_batches(sampler, eval_set.feeds, eval_set.noise, 10)
        scores[precision] = score(chunks[precision], eval_set)
    errors = path_errors(chunks["int8"], chunks["fp32"]).endpoint_cm
    assert np.median(errors) < 0.6 and errors.max() < 2.0, errors
    assert abs(scores["int8"]["success"] - scores["fp32"]["success"]) * SCENES <= 1


def test_fp8_qdq_carries_float8_types_that_onnxruntime_runs(quantized, tmp_path: Path) -> None:
    """FP8 for Hopper/Thor: E4M3 Q/DQ at opset 19; ONNX Runtime's CPU runs it as FP8 rounding + fp32 math
    at basic graph optimizations, as the onnxruntime backend loads it (its extended fusions get it wrong).
    On a two-layer graph: ONNX Runtime's FP8 calibration (histograms) takes half a minute on the expert."""
    from onnx import helper

    manifest = quantized[0]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), f"w{i}") for i in range(2)]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w0"], ["h"], name="first"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w1"], ["y"], name="second")], "two_layers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "two.onnx"))
    feeds = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(4)]
    result = quantize_qdq(tmp_path, {ACTION_EXPERT: "two.onnx"}, manifest.config, "fp8", {ACTION_EXPERT: feeds})
    model = onnx.load(str(tmp_path / result.files[ACTION_EXPERT]))
    assert result.quantized_nodes[ACTION_EXPERT] == 2
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
    float8 = [list(i.dims) for i in model.graph.initializer if i.data_type == TensorProto.FLOAT8E4M3FN]
    assert float8.count([16, 16]) == 2, float8  # both weights (the rest: zero points)
    import ml_dtypes
    import onnxruntime as ort

    # What an FP8 GEMM reads: each input rounded to E4M3 at its scale (weights per output channel).
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def e4m3(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return (values / scale).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale

    w0, w1 = (init[f"w{i}_quantized"].astype(np.float32) * init[f"w{i}_scale"][None, :] for i in range(2))
    x = feeds[0]["x"]
    simulated = e4m3(np.maximum(e4m3(x, init["x_scale"]) @ w0, 0), init["r_scale"]) @ w1
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # as the onnxruntime backend
    served = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fp32 = ort.InferenceSession(str(tmp_path / "two.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
    np.testing.assert_allclose(served.run(None, feeds[0])[0], simulated, rtol=1e-5, atol=1e-5)
    assert np.abs(simulated - fp32).max() < 0.1 * np.abs(fp32).max(), "E4M3 keeps about two significant digits"


def test_the_gate_allows_three_points_in_every_measure() -> None:
    def result(one_chunk: float, *loops: float) -> dict:
        return {"one_chunk": {"success": one_chunk},
                "closed_loop": {f"latency {4 * i} rows": {"success": s} for i, s in enumerate(loops)}}

    results = {"fp32": result(0.925, 0.98, 0.98), "int8": result(0.90, 0.95, 0.99), "bad": result(0.925, 0.94, 0.98)}
    assert gate(results, "int8")["passed"]
    verdict = gate(results, "bad")
    assert not verdict["passed"] and verdict["success_drop_points"]["closed_loop latency 0 rows"] == 4.0


def test_shipping_adds_the_precision_and_keeps_the_rest_of_the_manifest(quantized, tmp_path: Path) -> None:
    manifest, result, _ = quantized
    shipped = load_manifest(MODEL_DIR)
    fp32 = copy_fp32_engines(shipped, tmp_path)
    write_manifest(tmp_path, shipped.config, {"fp32": fp32}, extra={"path_dims": [0, 1, 2], "confidence_scale": 0.5})
    ship_qdq(tmp_path, load_manifest(tmp_path), "int8", manifest.engine("int8", VISION).path.parent,
             qdq_record("int8", result, CALIBRATION))
    written = load_manifest(tmp_path)
    assert written.precisions == ("fp32", "int8") and written.qdq_precision("int8")
    assert written.raw["confidence_scale"] == 0.5 and written.raw["path_dims"] == [0, 1, 2]
    assert written.engine("int8", VISION).sha256 == manifest.engine("int8", VISION).sha256
