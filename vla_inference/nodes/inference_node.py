"""vla_inference_node: the lifecycle node serving /vla/inference.

A thin shell: it translates parameters and messages; the request contract lives in
``vla_inference.serving.inference_server`` and the model in ``vla_inference.runtime``.

Lifecycle:
  configure  -> validate parameters, load the backend, warm it up (FAILURE + one log line on error)
  activate   -> start the worker and answer requests
  deactivate -> stop accepting; the running request still gets its response, the waiting one NOT_READY
  cleanup    -> release the backend
Requests that arrive while the node is configured but inactive are answered NOT_READY on both the
topic and the service. The response publisher is a plain publisher (not a lifecycle one) precisely so
those answers are not silently swallowed.
"""
from __future__ import annotations

import logging
import threading
import traceback
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter

from vla_inference import qos
from vla_inference.nodes.diagnostics import diagnostic_array
from vla_inference.nodes.entry_point import spin_node
from vla_inference.nodes.parameters import declare
from vla_inference.nodes.python_logging import PACKAGE_LOGGER, forward_package_logging
from vla_inference.runtime.backends.base import BackendUnavailableError
from vla_inference.runtime.pipeline import InferencePipeline
from vla_inference.runtime.sample_views import CONFIDENCE_VIEWS, max_view_rows
from vla_inference.serving.inference_server import InferenceServer, Reply, ReplyFn, ServerSettings, Status
from vla_inference.serving.request_validator import RequestPayload, RequestValidator, ValidationLimits
from vla_inference.spec import interface
from vla_inference.spec.interface import BACKENDS, RESIZE_MODES
from vla_inference.spec.manifest import ModelDirError, shipped_model_dir
from vla_inference.spec.model_dir import open_model_dir
from vla_msgs.msg import InferenceRequest, InferenceResponse, ModelMetadata
from vla_msgs.srv import Infer

LIVE = ("denoising_steps", "max_request_rate_hz", "deadline_ms", "seed")
AT_CONFIGURE = (
    "backend", "model_dir", "precision", "device", "engine_cache_dir", "intra_op_threads", "camera_names",
    "image_resize_mode", "num_samples", "confidence_views", "pipelining", "tokenizer_path", "vision_num_heads",
    "torch_fast_path", "torch_compile",
)
CHOICES = {"backend": BACKENDS, "image_resize_mode": RESIZE_MODES, "confidence_views": CONFIDENCE_VIEWS}
SERVICE_TIMEOUT_S = 60.0


class InferenceNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("vla_inference_node", **kwargs)
        self._log_handler = forward_package_logging(self.get_logger())
        self._declare_parameters()
        self._server: Optional[InferenceServer] = None
        self._pipeline: Optional[InferencePipeline] = None
        self._request_group = MutuallyExclusiveCallbackGroup()
        self._service_group = ReentrantCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._request_sub = None
        self._response_pub = None
        self._service = None
        self._publish_lock = threading.Lock()
        self._received_lock = threading.Lock()
        self._received = 0
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._metadata_pub = self.create_publisher(ModelMetadata, interface.METADATA_TOPIC, qos.METADATA_QOS)
        self._diagnostics_timer = self.create_timer(1.0, self._publish_diagnostics, callback_group=self._timer_group)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # -- parameters --------------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        unconfigured = " Changeable only while unconfigured."
        live = " Live: applies from the next request."
        declare(self, "backend", "onnxruntime", "Runtime: onnxruntime (CPU default), tensorrt or torch." + unconfigured,
                choices=BACKENDS)
        declare(self, "model_dir", "", "Model directory with manifest.json, or a LeRobot pi0.5 checkpoint "
                "(config.json + model.safetensors + processor files); empty = the shipped tiny policy." + unconfigured)
        declare(self, "tokenizer_path", "", "pi0.5 checkpoints without a tokenizer file of their own: PaliGemma's "
                "tokenizer.model or tokenizer.json (never downloaded)." + unconfigured)
        declare(self, "vision_num_heads", 0, "pi0.5 checkpoints: SigLIP attention heads; 0 = width / 72 "
                "(So400m), which the tensor shapes cannot tell apart from other head counts." + unconfigured,
                int_range=(0, 64))
        declare(self, "precision", "auto", "Engine precision: auto (the backend's default: onnxruntime fp32, "
                "tensorrt fp16, torch bf16 on cuda / fp32 on cpu) or one the backend takes (fp32, int8, bf16, ...)."
                + unconfigured)
        declare(self, "device", "auto", "auto (tensorrt: cuda; torch: cuda when a GPU is visible; onnxruntime: cpu), "
                "cpu or cuda." + unconfigured, choices=("auto", "cpu", "cuda"))
        declare(self, "engine_cache_dir", "", "TensorRT plan cache (vla-build-engines fills it ahead of time); empty = "
                "$ROS_HOME/vla_inference/engines, or ~/.cache/vla_inference/engines without ROS_HOME." + unconfigured)
        declare(self, "intra_op_threads", 2, "ONNX Runtime intra-op threads." + unconfigured, int_range=(1, 64))
        declare(self, "torch_fast_path", True, "torch on cuda: serve this project's policies through the fused fast "
                "path (checked against the policy at configure; off = the policy as written)." + unconfigured)
        declare(self, "torch_compile", True, "torch on cuda: let torch.compile fuse the fast path's elementwise work "
                "(longer configure; falls back to eager on a compile error)." + unconfigured)
        declare(self, "camera_names", ["front", "left", "right"],
                "Cameras, in the order requests carry their images; every request must carry this many."
                + unconfigured)
        declare(self, "image_resize_mode", "stretch",
                "How request images of another size reach the model's: stretch, letterbox or center_crop."
                + unconfigured, choices=RESIZE_MODES)
        declare(self, "num_samples", 4, "Action chunks sampled per request (one batch); their spread gives the "
                "confidence (at least 2, so there is a spread to measure)." + unconfigured, int_range=(2, 32))
        declare(self, "confidence_views", "cameras", "What the samples differ in besides their noise: cameras "
                "(even samples see all cameras, odd ones the first; two vision rows) or noise (one row)."
                + unconfigured, choices=CONFIDENCE_VIEWS)
        declare(self, "pipelining", True, "Overlap the next request's vision stage with the current denoising."
                + unconfigured)
        declare(self, "denoising_steps", 10, "Euler steps of the action expert; a request's non-zero "
                "denoising_steps overrides it." + live, int_range=(1, interface.MAX_DENOISING_STEPS))
        declare(self, "max_request_rate_hz", 5.0, "Accepted requests per second at most; faster ones are answered "
                "REJECTED_RATE_LIMIT with retry_after_ms." + live, float_range=(0.1, 100.0))
        declare(self, "deadline_ms", 500.0, "A request without result this long after receipt is answered "
                "DEADLINE_EXCEEDED at that moment, without actions (a watchdog: a hung backend costs the client "
                "its deadline, never more); a result arriving later is dropped." + live, float_range=(1.0, 60000.0))
        declare(self, "seed", 0, "Base seed of the flow-matching noise (per request: seed and request_id)." + live,
                int_range=(0, 2**31 - 1))

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _on_set_parameters(self, params: List[Parameter]) -> SetParametersResult:
        for param in params:
            if param.name in AT_CONFIGURE and self._pipeline is not None:
                return SetParametersResult(successful=False,
                                           reason=f"{param.name} applies at configure: clean up the node first")
            choices = CHOICES.get(param.name)
            if choices is not None and param.value not in choices:
                return SetParametersResult(successful=False, reason=f"{param.name}: expected one of {list(choices)}")
            if param.name == "camera_names" and not param.value:
                return SetParametersResult(successful=False, reason="camera_names: at least one camera")
        if self._server is not None:
            live = {p.name: p.value for p in params if p.name in LIVE}
            if live:
                self._server.update_settings(**live)
        return SetParametersResult(successful=True)

    def _settings(self) -> ServerSettings:
        return ServerSettings(
            denoising_steps=int(self._param("denoising_steps")),
            max_request_rate_hz=float(self._param("max_request_rate_hz")),
            deadline_ms=float(self._param("deadline_ms")),
            seed=int(self._param("seed")),
        )

    # -- lifecycle -----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._pipeline = self._load_pipeline()
        except Exception as exc:  # noqa: BLE001 - back to unconfigured, saying why
            # A model or set-up problem is one clear line; anything else is a bug: its traceback too.
            expected = isinstance(exc, (ModelDirError, BackendUnavailableError, FileNotFoundError, ValueError))
            detail = "" if expected else f"\n{traceback.format_exc()}"
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}{detail}")
            self._pipeline = None
            return TransitionCallbackReturn.FAILURE
        config, io = self._pipeline.cfg, self._pipeline.encoder.io
        limits = ValidationLimits(
            num_cameras=len(self._param("camera_names")),
            state_dim=io.state_dim,
            lidar_rows=config.lidar.rows,
            lidar_cols=config.lidar.cols,
            image_size=config.vision.image_size,
            resize_mode=self._param("image_resize_mode"),
        )
        self._server = InferenceServer(self._pipeline, RequestValidator(limits), self._settings())
        self._response_pub = self.create_publisher(InferenceResponse, interface.RESPONSE_TOPIC, qos.INFERENCE_QOS)
        self._request_sub = self.create_subscription(
            InferenceRequest, interface.REQUEST_TOPIC, self._on_request, qos.READER_QOS,
            callback_group=self._request_group)
        self._service = self.create_service(Infer, interface.INFER_SERVICE, self._on_infer,
                                            callback_group=self._service_group)
        self._metadata_pub.publish(self._metadata())
        if not io.uses_lidar:
            self.get_logger().info(f"the {config.architecture} model has no LiDAR input: requests' "
                                   "sensor_data.lidar_range is ignored")
        cameras = list(self._param("camera_names"))
        mapping = "" if not io.camera_keys else f" -> {list(io.camera_keys[:len(cameras)])}"
        self.get_logger().info(
            f"configured: backend={self._param('backend')} model={config.preset} ({config.architecture}) "
            f"cameras={cameras}{mapping} state={io.state_dim} actions={config.action_horizon}x{io.action_dim} "
            f"steps={self._param('denoising_steps')}")
        return TransitionCallbackReturn.SUCCESS

    def _metadata(self) -> ModelMetadata:
        pipeline = self._pipeline
        assert pipeline is not None
        config, io = pipeline.cfg, pipeline.encoder.io
        return ModelMetadata(
            model_dir=str(pipeline.backend.manifest.model_dir), architecture=config.architecture,
            backend=self._param("backend"), precision=self._param("precision"),
            camera_names=list(self._param("camera_names")), camera_keys=list(io.camera_keys),
            state_dim=io.state_dim, action_dim=io.action_dim, action_horizon=config.action_horizon,
            uses_lidar=io.uses_lidar, max_denoising_steps=interface.MAX_DENOISING_STEPS)

    def _load_pipeline(self) -> InferencePipeline:
        from vla_inference.runtime.backends import create_backend, resolve_placement

        model_dir = Path(self._param("model_dir") or shipped_model_dir())
        manifest = open_model_dir(model_dir, vision_num_heads=int(self._param("vision_num_heads")) or None,
                                  tokenizer_path=self._param("tokenizer_path") or None)
        cameras = len(self._param("camera_names"))
        if not 1 <= cameras <= manifest.config.max_cameras:
            raise ValueError(f"camera_names: {cameras} cameras, the model takes 1..{manifest.config.max_cameras}")
        torch_options = {}
        if self._param("backend") == "torch":
            torch_options = {"fast_path": bool(self._param("torch_fast_path")),
                             "compile": bool(self._param("torch_compile"))}
        device, precision = resolve_placement(self._param("backend"), self._param("device"), self._param("precision"))
        placement = {"device": device, **({"precision": precision} if precision is not None else {})}
        self.get_logger().info(f"backend {self._param('backend')} on {device}, precision {precision or 'its default'}")
        backend = create_backend(
            self._param("backend"),
            manifest,
            **placement,
            intra_op_threads=int(self._param("intra_op_threads")),
            engine_cache_dir=self._param("engine_cache_dir") or None,
            num_samples=int(self._param("num_samples")),  # TensorRT builds its profiles for the served
            view_rows=max_view_rows(self._param("confidence_views"), manifest.config.max_cameras),  # batch
            **torch_options,
        )
        return InferencePipeline(
            backend,
            manifest.config,
            num_samples=int(self._param("num_samples")),
            confidence_views=self._param("confidence_views"),
            pipelining=bool(self._param("pipelining")),
            owns_backend=True,
        )

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._server.start()
        except Exception as exc:  # noqa: BLE001 - rclpy would not log it: say why, stay inactive
            self.get_logger().error(f"activate failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            return TransitionCallbackReturn.FAILURE
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._server is not None:
            self._server.stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error raised in state {state.label}; releasing the backend")
        self.release()
        return TransitionCallbackReturn.SUCCESS

    @property
    def lifecycle_state(self) -> str:
        """The state machine's current state label: ``unconfigured``, ``inactive``, ``active``, ``finalized``
        or a transition (``configuring``, ``activating``, ...). The node keeps no copy of its own."""
        return self._state_machine.current_state[1]

    def release(self) -> None:
        """Stop serving and free the backend, whatever the lifecycle state (also at process exit)."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        for entity, destroy in ((self._request_sub, self.destroy_subscription),
                                (self._service, self.destroy_service),
                                (self._response_pub, self.destroy_publisher)):
            if entity is not None:
                destroy(entity)
        self._request_sub = self._service = self._response_pub = None
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None

    def destroy_node(self) -> None:
        logging.getLogger(PACKAGE_LOGGER).removeHandler(self._log_handler)
        super().destroy_node()

    # -- requests ------------------------------------------------------------------------------
    def _on_request(self, msg: InferenceRequest) -> None:
        self._handle(msg, self._publish_reply(msg))

    def _on_infer(self, request: Infer.Request, response: Infer.Response) -> Infer.Response:
        done = threading.Event()
        holder: List[InferenceResponse] = []

        def reply(result: Reply) -> None:
            holder.append(self._to_msg(request.request, result))
            done.set()

        self._handle(request.request, reply)
        if not done.wait(SERVICE_TIMEOUT_S):
            holder.append(self._to_msg(request.request, Reply(
                request.request.request_id, Status.INTERNAL_ERROR, f"no result within {SERVICE_TIMEOUT_S:g} s")))
        response.response = holder[0]
        return response

    @property
    def requests_received(self) -> int:
        """Requests taken from the topic or the service since start (each gets exactly one response)."""
        return self._received

    def _handle(self, msg: InferenceRequest, reply: ReplyFn) -> None:
        with self._received_lock:
            self._received += 1
        server = self._server
        state = self.lifecycle_state
        if server is None or state != "active":
            why = f"node is {state}, not active" if state != "active" else "node is shutting down"
            reply(Reply(msg.request_id, Status.NOT_READY, why))
            return
        server.submit(msg.request_id, RequestPayload.from_msg(msg), reply)

    def _publish_reply(self, msg: InferenceRequest) -> ReplyFn:
        def reply(result: Reply) -> None:
            if not self.context.ok():
                return  # Ctrl-C while the request ran: the context, and with it every subscriber, is gone
            response = self._to_msg(msg, result)
            publisher = self._response_pub
            if publisher is None:
                self.get_logger().warning(f"request {result.request_id}: no publisher left for its response")
                return
            with self._publish_lock:
                try:
                    publisher.publish(response)
                except Exception:  # noqa: BLE001 - the context may shut down between the check and here
                    if self.context.ok():
                        raise

        return reply

    def _to_msg(self, request: InferenceRequest, result: Reply) -> InferenceResponse:
        response = InferenceResponse(
            request_id=result.request_id,
            status=int(result.status),
            message=result.message,
            confidence=float(result.confidence),
            denoising_steps=int(result.denoising_steps),
            latency_ms=float(result.latency_ms),
            retry_after_ms=int(result.retry_after_ms),
        )
        response.header.stamp = self.get_clock().now().to_msg()
        response.header.frame_id = request.header.frame_id
        if result.actions is not None:
            actions = np.ascontiguousarray(result.actions, dtype=np.float32)
            response.action_horizon, response.action_dim = (int(n) for n in actions.shape)
            response.action_seq = actions.ravel()
        return response

    # -- diagnostics -----------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        state = self.lifecycle_state
        values = {
            "lifecycle_state": state,
            "requests_received": self._received,
            "backend": self._param("backend"),
            "denoising_steps": self._param("denoising_steps"),
        }
        if self._server is not None:
            values.update(self._server.stats.snapshot())
        level = DiagnosticStatus.OK if state == "active" else DiagnosticStatus.WARN
        self._diagnostics_pub.publish(diagnostic_array(self, "vla_inference_node: inference", level, state, values))


def main(args: Optional[list] = None) -> None:
    spin_node(InferenceNode, args, num_threads=4, before_destroy=lambda node: node.release())


if __name__ == "__main__":
    main()
