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
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from vla_inference.model.engine_spec import ACTION_EXPERT
from vla_inference.runtime.backends.base import Backend, BackendUnavailableError
from vla_inference.runtime.manifest import Manifest, ModelDirError

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - onnxruntime is a hard requirement of the package
    ort = None
    _IMPORT_ERROR: Optional[ImportError] = exc
else:
    _IMPORT_ERROR = None

LOG = logging.getLogger(__name__)

_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "bool": "tensor(bool)"}
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
    ) -> None:
        if ort is None:
            raise BackendUnavailableError(self.name, "the `onnxruntime` package", str(_IMPORT_ERROR))
        if device not in DEVICES:
            raise ValueError(f"device: expected one of {DEVICES}, received {device!r}")
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailableError(
                self.name,
                "`onnxruntime-gpu` with the CUDAExecutionProvider",
                f"available providers: {ort.get_available_providers()}",
            )
        super().__init__(manifest, precision)
        self.engine_paths = {name: f.path for name, f in self.engine_files().items()}
        self._device = device
        self.intra_op_threads = intra_op_threads
        self.expert_intra_op_threads = expert_intra_op_threads
        self.allow_spinning = allow_spinning
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
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
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
        self._sessions.clear()
        self._output_names.clear()

    def describe(self) -> Dict[str, Any]:
        info = super().describe()
        info.update(
            onnxruntime=ort.__version__,
            providers=self._providers(),
            intra_op_threads=self.intra_op_threads,
            expert_intra_op_threads=self.expert_intra_op_threads,
            allow_spinning=self.allow_spinning,
        )
        return info
