"""ONNX Runtime backend: the embedded default (CPU), with the CUDA execution provider on request.

One ``InferenceSession`` per engine. CPU sessions use ``intra_op_threads`` threads inside an
operator and one between operators (sequential execution: the graphs are chains, and a second
pool would only fight the first for the cores). Idle workers do not spin by default: with the
pipeline the two sessions run at the same time, and spinning workers of one session take the cores
the other needs (measured on 2 cores: vision 7.2 ms spinning vs 3.9 ms not). The action expert
gets its own thread count, 1 by default: its per-step graph is many small operators, where a
second thread costs more in hand-offs than it gains (tiny, 10 steps, 2 cores: end-to-end p50
15 ms with one expert thread vs 17 ms with two); ``intra_op_threads`` (0 = all cores) is for the
vision engine. ``session.run`` releases the GIL, which is what
lets the pipeline overlap the next request's vision pass with the current denoising loop on two
Python threads.

The denoising loop splits the K samples into ``expert_workers`` slices (2 by default) that run at
the same time, each a single-threaded run of the one expert session (``run`` is thread-safe): a
run of the per-step graph cannot spread its small operators over two cores, two runs can. On the
2-core Zen 3 (AVX2) these numbers were taken on, 10 steps for K=4: one run 47.2 ms, two runs of
two samples 30.0 ms, one run on two intra-op threads 43.8 ms (medians of 12 interleaved trials).
Each sample's arithmetic is its own, so slicing changes results by float rounding at most.

Q/DQ engines (the manifest's ``quantization`` record) load with common-subexpression elimination
off: it merges the identical DequantizeLinear nodes in front of projections that share an input
(the expert's query/key/value), and a shared DQ blocks the fusion into an integer MatMul, leaving
15 of the tiny expert's 32 quantized products as float MatMuls on dequantized weights. FP8 Q/DQ
engines load with basic graph optimizations only: ONNX Runtime's CPU has no FP8 arithmetic and runs
them as Q -> DQ -> fp32 (a simulation of FP8's rounding), exactly so at the basic level, while its
extended Q/DQ fusions (1.32) turn a two-layer FP8 graph's output 100 % off.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from vla_inference.runtime.backends.base import Backend, BackendUnavailableError, HostPrefix
from vla_inference.spec.engine_spec import ACTION_EXPERT
from vla_inference.spec.manifest import QDQ_FORMAT, QDQ_TYPES, Manifest, ModelDirError

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - onnxruntime is a hard requirement of the package
    ort = None
    _IMPORT_ERROR: Optional[ImportError] = exc
else:
    _IMPORT_ERROR = None

LOG = logging.getLogger(__name__)

_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "bool": "tensor(bool)"}
# Session config entry that keeps CSE from merging the DQ nodes of a Q/DQ graph (module docstring).
QDQ_SESSION_CONFIG = ("optimization.disable_specified_optimizers", "CommonSubexpressionElimination")
DEVICES = ("cpu", "cuda")


class OnnxRuntimeBackend(Backend):
    """Runs the manifest's ONNX files for ``precision`` ("fp32", "int8", ...) with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(
        self,
        manifest: Manifest,
        precision: str = "fp32",
        device: str = "cpu",
        intra_op_threads: int = 0,
        expert_intra_op_threads: int = 1,
        allow_spinning: bool = False,
        expert_workers: int = 2,
    ) -> None:
        if ort is None:
            raise BackendUnavailableError(self.name, "the `onnxruntime` package", str(_IMPORT_ERROR))
        if device not in DEVICES:
            raise ValueError(f"device: expected one of {DEVICES}, received {device!r}")
        if expert_workers < 1:
            raise ValueError(f"expert_workers: expected >= 1, received {expert_workers}")
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailableError(
                self.name,
                "`onnxruntime-gpu` with the CUDAExecutionProvider",
                f"available providers: {ort.get_available_providers()}",
            )
        super().__init__(manifest, precision)
        files = self.engine_files()
        self.engine_paths = {name: f.path for name, f in files.items()}
        self._qdq = {name: (f.quantization or {}).get("format") == QDQ_FORMAT for name, f in files.items()}
        self._float8 = {name: self._qdq[name] and (f.quantization or {}).get("type") == QDQ_TYPES["fp8"]
                        for name, f in files.items()}
        self._device = device
        self.intra_op_threads = intra_op_threads
        self.expert_intra_op_threads = expert_intra_op_threads
        self.allow_spinning = allow_spinning
        self.expert_workers = expert_workers
        self._workers: Optional[ThreadPoolExecutor] = None
        self._sessions: Dict[str, Any] = {}
        self._output_names: Dict[str, List[str]] = {}

    @property
    def device(self) -> str:
        return self._device

    def _providers(self) -> List[str]:
        if self._device == "cuda":
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _session_options(self, engine_name: str) -> Any:
        options = ort.SessionOptions()
        threads = self.expert_intra_op_threads if engine_name == ACTION_EXPERT else self.intra_op_threads
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if self._float8[engine_name]
                                            else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        if self._qdq[engine_name]:
            options.add_session_config_entry(*QDQ_SESSION_CONFIG)
        options.log_severity_level = 3
        return options

    def _load(self) -> None:
        try:
            for name, path in self.engine_paths.items():
                try:
                    session = ort.InferenceSession(
                        str(path), sess_options=self._session_options(name), providers=self._providers()
                    )
                except Exception as exc:  # ORT raises its own exception types for unreadable graphs
                    raise ModelDirError(f"{path}: ONNX Runtime cannot load it ({exc})") from exc
                self._check_session_io(name, session)
                self._sessions[name] = session
                self._output_names[name] = [o.name for o in session.get_outputs()]
        except BaseException:
            self._sessions.clear()
            raise
        if self.expert_workers > 1:
            self._workers = ThreadPoolExecutor(self.expert_workers, thread_name_prefix="vla-expert")
        LOG.info("onnxruntime %s: loaded %s (%s)", ort.__version__, list(self._sessions), self._providers()[0])

    def _check_session_io(self, name: str, session: Any) -> None:
        """The graph must declare exactly the manifest's tensors: a stale ONNX file is named here."""
        path = self.engine_paths[name]
        spec = self.specs[name]
        for kind, declared, expected in (
            ("inputs", session.get_inputs(), spec.inputs),
            ("outputs", session.get_outputs(), spec.outputs),
        ):
            got = {t.name: (t.type, len(t.shape)) for t in declared}
            want = {t.name: (_ORT_TYPES[t.dtype], len(t.shape)) for t in expected}
            if got != want:
                raise ModelDirError(f"{path}: graph {kind} {got} do not match the manifest's {want}")

    def _infer(self, engine_name: str, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        names = self._output_names[engine_name]
        return dict(zip(names, self._sessions[engine_name].run(names, dict(feeds))))

    def _release(self) -> None:
        if self._workers is not None:
            self._workers.shutdown(wait=True)
            self._workers = None
        self._sessions.clear()
        self._output_names.clear()

    def denoise(self, prefix: HostPrefix, noise: np.ndarray, steps: int) -> np.ndarray:
        """Stage 2 on ``expert_workers`` slices of the K samples at once (see the module docstring)."""
        bounds = np.linspace(0, len(noise), min(self.expert_workers, len(noise)) + 1).round().astype(int)
        if self._workers is None or len(bounds) <= 2:
            return super().denoise(prefix, noise, steps)
        loop = super().denoise
        parts = [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]
        futures = [
            self._workers.submit(loop, HostPrefix(prefix.prefix_kv[part], prefix.prefix_mask[part]), noise[part], steps)
            for part in parts
        ]
        return np.concatenate([future.result() for future in futures])

    def describe(self) -> Dict[str, Any]:
        info = super().describe()
        info.update(
            onnxruntime=ort.__version__,
            providers=self._providers(),
            intra_op_threads=self.intra_op_threads,
            expert_intra_op_threads=self.expert_intra_op_threads,
            allow_spinning=self.allow_spinning,
            expert_workers=self.expert_workers,
        )
        return info
