"""One code path for NumPy (CPU) and CuPy (NVIDIA GPU).

Compute code asks for `xp` (the array module) from the Backend it is given, or from its arrays through
`get_array_module`, and never imports numpy for arrays it computes on. Host-only code (audio, CSV,
pickles, checkpoints) uses numpy directly and moves arrays with `to_host` / `Backend.asarray`.
"""
from __future__ import annotations

import os

import numpy

from convnet_cli.errors import ConfigError

DTYPE = numpy.float32


def _import_cupy():
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        return None, exc
    return cupy, None


def get_array_module(*arrays):
    """numpy or cupy, whichever holds `arrays` (numpy when cupy is absent)."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy

            return cupy
    return numpy


def to_host(a):
    """A numpy array with the same contents (no copy when it already is one)."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return numpy.asarray(a)


class Backend:
    """The compute device: `xp` is numpy or cupy; `name` is 'cpu' or 'gpu:N'."""

    def __init__(self, xp, name: str, device_id: int | None = None):
        self.xp = xp
        self.name = name
        self.device_id = device_id

    @property
    def is_gpu(self) -> bool:
        return self.xp is not numpy

    def asarray(self, a, dtype=None):
        """Move a host array to the device (float32 unless `dtype` says otherwise)."""
        if dtype is None and numpy.asarray(a).dtype.kind == "f":
            dtype = DTYPE
        return self.xp.asarray(a, dtype=dtype)

    def rng(self, seed: int):
        """A random generator that lives on the device (dropout masks, augmentations)."""
        return self.xp.random.default_rng(seed)

    def synchronize(self):
        if self.is_gpu:
            self.xp.cuda.Device().synchronize()

    def __repr__(self):
        return f"Backend({self.name})"


CPU = Backend(numpy, "cpu")


def gpu_count() -> int:
    cupy, _ = _import_cupy()
    if cupy is None:
        return 0
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


def get_backend(device: str = "cpu") -> Backend:
    """Parse a `--device` value: `cpu`, `gpu`, `gpu:N` or `auto` (a GPU when one works, else the CPU)."""
    device = (device or "cpu").strip().lower()
    if device == "cpu":
        return CPU
    if device == "auto":
        return get_backend("gpu") if gpu_count() > 0 else CPU
    if device == "gpu" or device.startswith("gpu:"):
        index = 0
        if device.startswith("gpu:"):
            try:
                index = int(device[4:])
            except ValueError:
                raise ConfigError(f"--device {device!r}: expected cpu, gpu, gpu:N or auto") from None
        cupy, exc = _import_cupy()
        if cupy is None:
            raise ConfigError(
                f"--device {device}: CuPy is not installed or does not load ({exc}); "
                "install it with: pip install 'convnet[gpu]' (or run with --device cpu)"
            )
        n = gpu_count()
        if n == 0:
            raise ConfigError(f"--device {device}: no NVIDIA GPU is visible to CuPy; run with --device cpu")
        if index >= n:
            raise ConfigError(f"--device {device}: only {n} GPU(s) present (gpu:0 .. gpu:{n - 1})")
        cupy.cuda.Device(index).use()
        return Backend(cupy, f"gpu:{index}", index)
    raise ConfigError(f"--device {device!r}: expected cpu, gpu, gpu:N or auto")


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
