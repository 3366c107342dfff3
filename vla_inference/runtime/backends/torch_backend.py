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
  table, a synchronous copy). By default both graphs run ``FastPolicy``
  (``vla_inference.model.fast_policy``, installed through the policy's kernel hooks): the policy's
  own parameters in a GPU arrangement (fused GEMMs, time-conditioning table, shared-prefix attention
  over aligned padded keys, patch convolutions as GEMMs, camera view rows in one pass when they are
  views of row 0) with ``torch.compile`` fusing the
  elementwise work; it is checked against the policy as written when it is prepared and falls back
  to it (or to eager on a compile error). docs/benchmarks.md has the measurements.

The policy comes from the manifest's ``weights`` file (SHA-256 checked), or, for timing runs of
the full-size preset without a trained checkpoint, from ``TorchBackend.with_random_weights``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from vla_inference.runtime.backends.base import Backend, BackendUnavailableError, HostPrefix
from vla_inference.runtime.sample_views import plan_views, single_camera_views, view_feeds
from vla_inference.spec.config import VlaConfig
from vla_inference.spec.engine_spec import ACTION_EXPERT, VISION, check_inputs
from vla_inference.spec.flow import flow_schedule
from vla_inference.spec.manifest import MANIFEST_NAME, Manifest, ModelDirError, sha256_of

try:
    import torch

    from vla_inference.model.fast_policy import ATTENTIONS, PREFIX_ATTENTIONS, FastPolicy
    from vla_inference.model.pi05 import load_pi05_weights
    from vla_inference.model.policy import MASK_BIAS, build_policy, load_policy
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
        fast_path: bool = True,
        compile: bool = DEFAULT_COMPILE,
        attention: str = "split",
        sync_prefix: bool = True,
        prefix_attention: str = "manual",
        shared_views: bool = True,
        online_softmax: bool = True,
    ) -> None:
        """CUDA options (validated everywhere, used only on CUDA: the CPU always runs the policy as
        written), plain arguments so an A/B run states them (``vla-bench --torch-option``):
        ``fast_path`` serves through ``FastPolicy``; ``compile`` lets ``torch.compile`` fuse its
        elementwise work; ``attention`` 'split', 'joint' (SDPA over the concatenated keys, for A/B)
        or 'flex' (one FlexAttention kernel over them, for A/B); ``sync_prefix``: stage 1 waits for
        its GPU work, so the vision stage time is the GPU time; off, it returns once the work is
        queued (stage 2 waits on the slot's event) and the next request's preprocessing overlaps the
        vision pass; ``prefix_attention`` 'manual' or 'sdpa' for the prefix backbone's attention;
        ``shared_views``: camera views (two rows, the second camera 0 alone) in one backbone pass,
        each camera's ViT once (``FastPolicy.encode_views``); ``online_softmax`` False: Inductor's
        softmax as a plain reduction (A/B of the expert's softmax kernel)."""
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
        for name, value in (("fast_path", fast_path), ("compile", compile), ("sync_prefix", sync_prefix),
                            ("shared_views", shared_views), ("online_softmax", online_softmax)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}: expected True or False, received {value!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention: expected one of {ATTENTIONS}, received {attention!r}")
        if prefix_attention not in PREFIX_ATTENTIONS:
            raise ValueError(f"prefix_attention: expected one of {PREFIX_ATTENTIONS}, received {prefix_attention!r}")
        super().__init__(manifest, precision, source_precision="fp32")
        self._device = device
        self.intra_op_threads = intra_op_threads
        self.cuda_graphs = cuda_graphs
        self.dtype = _torch_dtype(precision)
        self.policy = policy
        self.fast_path, self.compile, self.sync_prefix = fast_path, compile, sync_prefix
        self.attention, self.prefix_attention = attention, prefix_attention
        self.shared_views, self.online_softmax = shared_views, online_softmax
        self._weights_path: Optional[Path] = None if policy is not None else self._verified_weights_path()
        self._fast: Optional[FastPolicy] = None
        self._fast_note = ""
        self._views_in_one_pass = False
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
        dtype = _torch_dtype(precision or ("bf16" if device == "cuda" else "fp32"))
        torch.manual_seed(seed)
        with torch.device(device):
            policy = build_policy(cfg)
        return cls.from_policy(policy.to(dtype=dtype).eval(), cfg, device, precision, **options)

    @property
    def device(self) -> str:
        return self._device

    def _verified_weights_path(self) -> Path:
        """The weights file, checked against the manifest's size and SHA-256 (a LeRobot checkpoint
        records none: its file is read as it is)."""
        record = self.manifest.raw.get("weights")
        manifest_path = self.manifest.model_dir / MANIFEST_NAME
        if not isinstance(record, dict) or "file" not in record:
            raise ModelDirError(f"{manifest_path}: lists no weights file (the torch backend needs one; an exported "
                                "pi0.5 is served by pointing model_dir at its LeRobot checkpoint)")
        path = self.manifest.model_dir / record["file"]
        if not path.is_file():
            raise ModelDirError(f"{path}: weights file listed in the manifest is missing")
        if str(record.get("format", "")).startswith("lerobot"):
            return path
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
            try:
                policy = self._load_weights()
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

    def _load_weights(self) -> Any:
        assert self._weights_path is not None
        record = self.manifest.raw.get("weights", {})
        layout = str(record.get("format", "")) if isinstance(record, dict) else ""
        if self.config.architecture == "pi05":
            return load_pi05_weights(self._weights_path, self.config, layout)
        return load_policy(self._weights_path, self.config)

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
                        sync_prefix=self.sync_prefix, fast_path_note=self._fast_note,
                        online_softmax=self._fast is None or self._fast.online_softmax,
                        shared_views=bool(self._static.get("views")))
        return info

    # -- pipeline stages (CUDA) -----------------------------------------------------------------
    def prepare(self, num_samples: int, slots: int, view_rows: int = 1) -> None:
        super().prepare(num_samples, slots, view_rows)
        if self._device != "cuda":
            return
        if self._fast is not None:  # a previous prepare's fast path: the self-check needs the policy as written
            self._fast.uninstall()
        self._fast, self._views_in_one_pass = None, False
        if self.fast_path and self.config.architecture != "vla":
            self._fast_note = f"no fused fast path for the {self.config.architecture} architecture: the policy as written"
        elif self.fast_path:
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
        self._views_in_one_pass = False
        if self.shared_views and self.view_rows > 1 and self.config.max_cameras > 1:
            try:
                cosine = self._views_check(fast)
            except Exception as exc:  # noqa: BLE001 - the views then run as two rows, as written
                LOG.error("one-pass camera views raised %s: %s; encoding the rows as given", type(exc).__name__, exc)
                self._fast_note += f"; one-pass views raised {type(exc).__name__}: {str(exc)[:200]}"
            else:
                self._views_in_one_pass = math.isfinite(cosine) and cosine >= SELF_CHECK_MIN_COSINE
                self._fast_note += f", one-pass views {cosine:.6f}" + ("" if self._views_in_one_pass else " (off)")
        if compile:
            fast = FastPolicy(self.policy, compile=True, attention=self.attention,
                              prefix_attention=self.prefix_attention, online_softmax=self.online_softmax)
        fast.install()
        return fast

    def _check_feeds(self, gen: "torch.Generator") -> Dict[str, "torch.Tensor"]:
        """Seeded vision inputs for one observation on the GPU (half the text masked)."""
        feeds = {}
        for t in self.specs[VISION].inputs:
            shape = t.concrete_shape(1)
            if t.dtype == "float32":
                feeds[t.name] = torch.rand(shape, generator=gen).mul_(2.0).sub_(1.0).abs_().to("cuda")
            elif t.dtype == "bool":
                feeds[t.name] = torch.ones(shape, dtype=torch.bool).to("cuda")
            else:
                feeds[t.name] = torch.randint(0, 256, shape, generator=gen).to("cuda")
        feeds["text_mask"][:, self.config.text_max_len // 2:] = False
        return feeds

    def _self_check(self, fast: FastPolicy) -> List[float]:
        """Cosine of (fast, policy) for the prefix keys/values and one velocity on seeded inputs."""
        cfg, dev = self.config, torch.device("cuda")
        gen = torch.Generator(device="cpu").manual_seed(1234)
        feeds = self._check_feeds(gen)
        k = 2
        x = torch.randn((k, cfg.action_horizon, cfg.action_dim), generator=gen).to(dev)
        t = torch.full((1,), 0.7, dtype=torch.float32, device=dev)
        ve, ex = self.policy.vision_engine, self.policy.action_expert
        args = [feeds[t_.name] for t_ in self.specs[VISION].inputs]
        with torch.inference_mode():
            ref_kv, mask = ve(*args)
            with fast.installed():
                fast_kv, _ = ve(*args)
            ref_v = ex(x, t.expand(k), ref_kv.expand(k, *ref_kv.shape[1:]), mask.expand(k, -1))
            table = fast.modulation_table(t)[0]
            fast_v = fast.velocity(x, t, table, *fast.pad_prefix(fast_kv[0], mask[0]))
            per_sample_v = fast.velocity(x, t, table, *fast.pad_prefix(fast_kv.expand(k, *fast_kv.shape[1:]),
                                                                       mask.expand(k, -1)))
        cos = torch.nn.functional.cosine_similarity
        pairs = ((fast_kv, ref_kv), (fast_v, ref_v), (per_sample_v, ref_v))
        return [float(cos(a.double().flatten(), b.double().flatten(), dim=0)) for a, b in pairs]

    def _views_check(self, fast: FastPolicy) -> float:
        """Cosine of ``encode_views`` against the vision engine as written on the two view rows, over
        the positions the rows attend to (elsewhere the one-pass rows hold zeros, the engine values
        that are masked)."""
        feeds = {name: value.cpu().numpy() for name, value in
                 self._check_feeds(torch.Generator(device="cpu").manual_seed(4321)).items()}
        rows = view_feeds(feeds, plan_views("cameras", self.config.max_cameras, 2))
        args = [torch.from_numpy(rows[t.name]).to("cuda") for t in self.specs[VISION].inputs]
        with torch.inference_mode():
            ref_kv, mask = self.policy.vision_engine(*args)
            with fast.installed():
                kv, fast_mask = fast.encode_views(*args)
        if not torch.equal(mask, fast_mask):
            return float("nan")
        kept = mask[:, None, None, None, :, None]
        return float(torch.nn.functional.cosine_similarity((kv * kept).double().flatten(),
                                                           (ref_kv * kept).double().flatten(), dim=0))

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
        if fast is not None and self._views_in_one_pass:  # the two view rows of one observation, one pass
            two = static["vision"][2]["in"]

            def views_pass(inputs: Dict[str, Any] = two) -> Any:
                return fast.encode_views(*(inputs[t.name] for t in vision_spec.inputs))

            graph, out = self._capture(views_pass, self._streams[VISION])
            static["views"] = {"fn": views_pass, "graph": graph, "out": out}
        prefix_kv, prefix_mask = (t[0] for t in static["vision"][1]["out"])
        if self.view_rows > 1:  # camera views: a prefix row per sample
            prefix_kv, prefix_mask = prefix_kv.expand(k, *prefix_kv.shape), prefix_mask.expand(k, -1)
        padded_len = fast.prefix_len_padded if fast is not None else cfg.prefix_len
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
            if views == 2 and "views" in static and single_camera_views(feeds):
                vision = static["views"]
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
        if self._device != "cuda" or isinstance(prefix, HostPrefix):
            # A host prefix (the lab's batched samplers) has no prepared slot: the engine-by-engine loop.
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
