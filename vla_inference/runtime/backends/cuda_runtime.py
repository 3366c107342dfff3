"""Thin wrappers over cuda-python's runtime bindings: streams, events, device and pinned buffers.

Only what the TensorRT backend needs, each call checked so a CUDA error surfaces as an exception
naming the call. Import-guarded: ``CUDART`` is None where cuda-python is not installed.
"""
from __future__ import annotations

import ctypes
from typing import Any, Optional, Sequence, Tuple

import numpy as np

try:
    from cuda.bindings import runtime as CUDART
except ImportError:
    try:
        from cuda import cudart as CUDART  # cuda-python < 12.6 layout
    except ImportError as exc:
        CUDART = None
        IMPORT_ERROR: Optional[ImportError] = exc
    else:
        IMPORT_ERROR = None
else:
    IMPORT_ERROR = None

STREAM_NON_BLOCKING = 0x01  # cudaStreamNonBlocking
EVENT_BLOCKING_SYNC = 0x01  # cudaEventBlockingSync
EVENT_DISABLE_TIMING = 0x02  # cudaEventDisableTiming


def check(result: Sequence[Any], call: str) -> Any:
    """Unwrap cuda-python's (error, value...) tuples, raising on anything but cudaSuccess."""
    err, values = result[0], result[1:]
    if err != CUDART.cudaError_t.cudaSuccess:
        _, name = CUDART.cudaGetErrorName(err)
        raise RuntimeError(f"{call} failed: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def set_device(index: int) -> None:
    check(CUDART.cudaSetDevice(index), "cudaSetDevice")


def device_properties(index: int) -> Tuple[str, str]:
    """(GPU name, "major.minor" compute capability)."""
    props = check(CUDART.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode()
    return str(name), f"{props.major}.{props.minor}"


class Stream:
    """A non-blocking stream; ``high_priority`` picks the device's greatest priority."""

    def __init__(self, high_priority: bool = False) -> None:
        least, greatest = check(CUDART.cudaDeviceGetStreamPriorityRange(), "cudaDeviceGetStreamPriorityRange")
        priority = greatest if high_priority else least
        self.handle = check(
            CUDART.cudaStreamCreateWithPriority(STREAM_NON_BLOCKING, priority), "cudaStreamCreateWithPriority"
        )
        self.priority = priority

    @property
    def address(self) -> int:
        """The raw ``cudaStream_t`` as an integer, the form TensorRT's Python API takes."""
        return int(self.handle)

    def synchronize(self) -> None:
        check(CUDART.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def wait(self, event: "Event") -> None:
        check(CUDART.cudaStreamWaitEvent(self.handle, event.handle, 0), "cudaStreamWaitEvent")

    def destroy(self) -> None:
        if self.handle is not None:
            check(CUDART.cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None


class Event:
    """A fence between streams and the host. ``blocking``: ``synchronize`` sleeps until the event
    completes instead of spinning a CPU core (what a Jetson's few cores and the other stage need)."""

    def __init__(self, blocking: bool = True) -> None:
        flags = EVENT_DISABLE_TIMING | (EVENT_BLOCKING_SYNC if blocking else 0)
        self.handle = check(CUDART.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")

    def record(self, stream: Stream) -> None:
        check(CUDART.cudaEventRecord(self.handle, stream.handle), "cudaEventRecord")

    def synchronize(self) -> None:
        check(CUDART.cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    def destroy(self) -> None:
        if self.handle is not None:
            check(CUDART.cudaEventDestroy(self.handle), "cudaEventDestroy")
            self.handle = None


class DeviceBuffer:
    """``cudaMalloc`` memory (256-byte aligned), allocated once and reused for every request."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr = int(check(CUDART.cudaMalloc(max(self.nbytes, 1)), "cudaMalloc"))

    def free(self) -> None:
        if self.ptr:
            check(CUDART.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class PinnedArray:
    """Page-locked host memory viewed as a NumPy array, so async copies really are asynchronous."""

    def __init__(self, shape: Sequence[int], dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.ptr = int(check(CUDART.cudaMallocHost(max(self.nbytes, 1)), "cudaMallocHost"))
        raw = (ctypes.c_byte * max(self.nbytes, 1)).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=self.dtype, count=int(np.prod(self.shape))).reshape(self.shape)

    def free(self) -> None:
        if self.ptr:
            self.array = None
            check(CUDART.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


def copy_htod(dst: int, src: PinnedArray, stream: Stream, nbytes: Optional[int] = None) -> None:
    kind = CUDART.cudaMemcpyKind.cudaMemcpyHostToDevice
    size = src.nbytes if nbytes is None else nbytes
    check(CUDART.cudaMemcpyAsync(dst, src.ptr, size, kind, stream.handle), "cudaMemcpyAsync(HtoD)")


def copy_dtoh(dst: PinnedArray, src: int, stream: Stream) -> None:
    kind = CUDART.cudaMemcpyKind.cudaMemcpyDeviceToHost
    check(CUDART.cudaMemcpyAsync(dst.ptr, src, dst.nbytes, kind, stream.handle), "cudaMemcpyAsync(DtoH)")


def copy_dtod(dst: int, src: int, nbytes: int, stream: Stream) -> None:
    kind = CUDART.cudaMemcpyKind.cudaMemcpyDeviceToDevice
    check(CUDART.cudaMemcpyAsync(dst, src, nbytes, kind, stream.handle), "cudaMemcpyAsync(DtoD)")
