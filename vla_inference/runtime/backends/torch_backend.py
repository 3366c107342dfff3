"""PyTorch backend: the training-side ``VlaPolicy`` served directly.

* CPU, fp32: the reference for parity with ONNX Runtime (same Euler loop, ``Backend.denoise``).
* CUDA, bf16 (or fp16/fp32): static device buffers and CUDA graphs. Stage 1 replays one graph for
  the whole prefix pass on a normal-priority stream and repeats the prefix K times into one of two
  slot buffers; stage 2 replays, ``steps`` times, a graph of one denoising step (expert forward +
  Euler update, flow time read from a device schedule through a device step counter) on the
  highest-priority stream. Each slot has its own step graph, so the expert reads its prefix in
  place, and the loop never synchronises with the host: the only wait is the final copy of the
  chunk back to pinned memory. Attention goes through ``scaled_dot_product_attention`` with the
  flash / memory-efficient kernels enabled.

The policy comes from the manifest's ``weights`` file (SHA-256 checked), or, for timing runs of
the full-size preset without a trained checkpoint, from ``TorchBackend.with_random_weights``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from vla_inference.model.config import VlaConfig
from vla_inference.model.engine_spec import ACTION_EXPERT, VISION, check_inputs
from vla_inference.runtime.backends.base import Backend, BackendUnavailableError
from vla_inference.runtime.flow import flow_schedule
from vla_inference.runtime.manifest import MANIFEST_NAME, Manifest, ModelDirError, sha256_of

try:
    import torch
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


def _torch_dtype(precision: str) -> "torch.dtype":
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _numpy_to_torch_dtype(name: str) -> "torch.dtype":
    return {"float32": torch.float32, "int64": torch.int64, "bool": torch.bool}[name]


class _DeviceSlot:
    """One prefix buffer pair [K, ...] plus the event that says stage 1 has filled it."""

    def __init__(self, kv: "torch.Tensor", mask: "torch.Tensor") -> None:
        self.prefix_kv = kv
        self.prefix_mask = mask
        self.ready = torch.cuda.Event()


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
    ) -> None:
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
        self.policy = None if self._weights_path is not None else self.policy
        if self._device == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> Dict[str, Any]:
        info = super().describe()
        info.update(torch=torch.__version__, cuda_graphs=self.cuda_graphs and self._device == "cuda")
        if self._device == "cuda":
            info["gpu"] = torch.cuda.get_device_name()
        return info

    # -- pipeline stages (CUDA) -----------------------------------------------------------------
    def prepare(self, num_samples: int, slots: int) -> None:
        super().prepare(num_samples, slots)
        if self._device == "cuda":
            with torch.inference_mode():
                self._prepare_cuda(num_samples, slots)

    def _prepare_cuda(self, k: int, slots: int) -> None:
        """Allocate static buffers and capture the prefix graph and one step graph per slot."""
        cfg = self.config
        dev = torch.device("cuda")
        vision_spec = self.specs[VISION]
        static: Dict[str, Any] = {}
        static["vision_in"] = {
            t.name: torch.zeros(t.concrete_shape(1), dtype=_numpy_to_torch_dtype(t.dtype), device=dev)
            for t in vision_spec.inputs
        }
        static["vision_host"] = {
            name: torch.zeros(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            for name, tensor in static["vision_in"].items()
        }
        static["vision_in"]["camera_mask"].fill_(True)
        static["vision_in"]["text_mask"][:, 0] = True
        static["x"] = torch.zeros((k, cfg.action_horizon, cfg.action_dim), dtype=torch.float32, device=dev)
        static["noise_host"] = torch.zeros(static["x"].shape, dtype=torch.float32, pin_memory=True)
        static["result_host"] = torch.zeros(static["x"].shape, dtype=torch.float32, pin_memory=True)
        static["schedule"] = torch.zeros((MAX_STEPS,), dtype=torch.float32, device=dev)
        static["schedule_host"] = torch.zeros((MAX_STEPS,), dtype=torch.float32, pin_memory=True)
        static["step"] = torch.zeros((1,), dtype=torch.int64, device=dev)
        static["dt"] = torch.zeros((), dtype=torch.float32, device=dev)
        static["done"] = torch.cuda.Event()
        self._static = static

        def vision_pass() -> Any:
            return self.policy.vision_engine(*(static["vision_in"][t.name] for t in vision_spec.inputs))

        static["vision_fn"] = vision_pass
        static["vision_graph"], static["vision_out"] = self._capture(vision_pass, self._streams[VISION])
        prefix_kv, prefix_mask = static["vision_out"]
        self._slots = [
            _DeviceSlot(prefix_kv.repeat(k, *([1] * (prefix_kv.dim() - 1))),
                        prefix_mask.repeat(k, *([1] * (prefix_mask.dim() - 1))))
            for _ in range(slots)
        ]
        static["step_fns"], static["step_graphs"] = [], []
        for slot in self._slots:
            step = self._make_step(slot)
            graph, _ = self._capture(step, self._streams[ACTION_EXPERT])
            static["step_fns"].append(step)
            static["step_graphs"].append(graph)
        torch.cuda.synchronize()

    def _make_step(self, slot: _DeviceSlot) -> Callable[[], Any]:
        """One denoising step on static buffers: t = schedule[step]; x += dt * v(x, t); step += 1."""
        static = self._static
        k = static["x"].shape[0]

        def denoise_step() -> Any:
            t = static["schedule"].index_select(0, static["step"]).expand(k)
            velocity = self.policy.action_expert(static["x"], t, slot.prefix_kv, slot.prefix_mask)
            static["x"].add_(velocity * static["dt"])
            static["step"].add_(1)
            return velocity

        return denoise_step

    def _capture(self, fn: Callable[[], Any], stream: "torch.cuda.Stream") -> Any:
        """Warm ``fn`` up on ``stream`` and capture it as a CUDA graph: (graph or None, outputs)."""
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(GRAPH_WARMUP_ITERS):
                out = fn()
        torch.cuda.current_stream().wait_stream(stream)
        if not self.cuda_graphs:
            return None, out
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            out = fn()
        return graph, out

    def encode_prefix(self, feeds: Mapping[str, np.ndarray], slot: int) -> Any:
        if self._device != "cuda":
            return super().encode_prefix(feeds, slot)
        check_inputs(self.specs[VISION], feeds)
        static = self._static
        stream = self._streams[VISION]
        target = self._slots[slot]
        with torch.inference_mode(), torch.cuda.stream(stream):
            for name, host in static["vision_host"].items():
                host.numpy()[...] = feeds[name]
                static["vision_in"][name].copy_(host, non_blocking=True)
            if static["vision_graph"] is not None:
                static["vision_graph"].replay()
                prefix_kv, prefix_mask = static["vision_out"]
            else:
                prefix_kv, prefix_mask = static["vision_fn"]()
            target.prefix_kv.copy_(prefix_kv.expand_as(target.prefix_kv))
            target.prefix_mask.copy_(prefix_mask.expand_as(target.prefix_mask))
            target.ready.record(stream)
        target.ready.synchronize()
        return slot

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
