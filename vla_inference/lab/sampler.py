"""The lab's one way to turn a model directory into chunks: ``Sampler(feeds, noise, steps)``.

Evaluation, closed-loop replay and training's parity check all draw chunks through a sampler, a
bounded batch of scenes at a time. The engines run through the serving backend itself
(``EngineSampler``), so what is evaluated is what the node serves: the same runner, input checks
and Euler loop; the PyTorch policy (``torch_sampler``) is the reference it is compared with.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np

from vla_inference.runtime.backends import Backend, HostPrefix, create_backend
from vla_inference.spec.config import VlaConfig
from vla_inference.spec.engine_spec import ACTION_EXPERT, VISION
from vla_inference.spec.manifest import Manifest

Sampler = Callable[[Dict[str, np.ndarray], np.ndarray, int], np.ndarray]
EVAL_BATCH = 25
# The server's default intra_op_threads (config/vla_inference.yaml), so the lab runs what is served.
SERVED_INTRA_OP_THREADS = 2


class EngineSampler:
    """A model directory's engines in one precision, served by ``backend`` (ONNX Runtime on CPU by
    default): stage 1 on every scene's own feeds, then the backend's own denoising loop."""

    def __init__(self, manifest: Manifest, precision: str = "fp32", backend: str = "onnxruntime",
                 **options: Any) -> None:
        if backend == "onnxruntime":
            options.setdefault("intra_op_threads", SERVED_INTRA_OP_THREADS)
        self.backend: Backend = create_backend(backend, manifest, precision=precision, **options)
        self.backend.load()

    def encode(self, feeds: Dict[str, np.ndarray]) -> HostPrefix:
        """Stage 1 with one prefix row per scene (the vision engine's own batch)."""
        out = self.backend.infer(VISION, feeds)
        return HostPrefix(out["prefix_kv"], out["prefix_mask"])

    def velocity(self, noisy_actions: np.ndarray, time: np.ndarray, prefix: HostPrefix) -> np.ndarray:
        """One action-expert evaluation (what parity checks and latency timings need)."""
        feeds = {"noisy_actions": noisy_actions, "time": time, "prefix_kv": prefix.prefix_kv,
                 "prefix_mask": prefix.prefix_mask}
        return self.backend.infer(ACTION_EXPERT, feeds)["velocity"]

    def __call__(self, feeds: Dict[str, np.ndarray], noise: np.ndarray, steps: int) -> np.ndarray:
        return self.backend.denoise(self.encode(feeds), noise, steps)

    def close(self) -> None:
        self.backend.release()

    def __enter__(self) -> "EngineSampler":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def torch_sampler(weights: Path, cfg: VlaConfig) -> Sampler:
    """The PyTorch policy from ``weights`` on the CPU, in float32: the reference the engines match."""
    import torch

    from vla_inference.model.policy import load_policy

    policy = load_policy(weights, cfg)

    def sample(feeds: Dict[str, np.ndarray], noise: np.ndarray, steps: int) -> np.ndarray:
        tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
        return policy.sample(tensors, steps, torch.from_numpy(noise)).numpy()

    return sample


def sample_in_batches(sampler: Sampler, feeds: Dict[str, np.ndarray], noise: np.ndarray, steps: int,
                      batch: int = EVAL_BATCH) -> np.ndarray:
    """One chunk per row of ``noise``, asked ``batch`` scenes at a time (bounded memory per call)."""
    chunks = []
    for start in range(0, noise.shape[0], batch):
        part = slice(start, start + batch)
        chunks.append(sampler({k: v[part] for k, v in feeds.items()}, noise[part], steps))
    return np.concatenate(chunks)
