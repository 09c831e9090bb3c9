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
        """Move a host array to the device (float32 unless `dtype` says otherwise); a device array is
        kept (or cast) where it is."""
        # numpy.asarray of a CuPy array raises (no implicit device-to-host copies): ask its dtype directly
        kind = a.dtype.kind if hasattr(a, "dtype") else numpy.asarray(a).dtype.kind
        if dtype is None and kind == "f":
            dtype = DTYPE
        return self.xp.asarray(a, dtype=dtype)

    def rng(self, seed: int):
        """A random generator that lives on the device (dropout masks): numpy's default_rng on the CPU;
        on a GPU a DeviceRandom, because cupy.random.default_rng sets up a cuRAND state per thread of the
        whole device at construction, and the trainer makes a fresh generator for every minibatch."""
        if self.xp is numpy:
            return numpy.random.default_rng(seed)
        return DeviceRandom(seed)

    def synchronize(self):
        if self.is_gpu:
            self.xp.cuda.Device().synchronize()

    def __repr__(self):
        return f"Backend({self.name})"


CPU = Backend(numpy, "cpu")


# A counter-based generator for the GPU: draw k of the stream of `seed` is splitmix64(seed + k * golden),
# so a generator costs nothing to make and a draw is one element-wise kernel. Compiled on first use.
_RANDOM_SOURCE = (
    "uint64 seed, uint64 offset",
    "T r",
    """
    unsigned long long z = seed + (offset + (unsigned long long)i) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    // the top 24 (float32) or 53 (float64) bits, scaled exactly into [0, 1)
    if (sizeof(T) == 4) {
        r = (T)(z >> 40) * (T)5.9604644775390625e-08;
    } else {
        r = (T)(z >> 11) * (T)1.1102230246251565e-16;
    }
    """,
)
_RANDOM_KERNEL = []


class DeviceRandom:
    """The part of numpy.random.Generator that compute code uses (`random`), on a CuPy device.

    Deterministic for a seed; each call continues the stream where the previous one stopped."""

    def __init__(self, seed: int):
        self.seed = int(seed) & 0x7FFFFFFFFFFFFFFF  # a Python int that fits int64 as well
        self.offset = 0

    def random(self, size=None, dtype=numpy.float64):
        """Uniform floats in [0, 1) of shape `size` (float32 or float64), as Generator.random."""
        import cupy

        if not _RANDOM_KERNEL:
            _RANDOM_KERNEL.append(cupy.ElementwiseKernel(*_RANDOM_SOURCE, "convnet_uniform"))
        dtype = numpy.dtype(dtype)
        if dtype not in (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64)):
            raise TypeError(f"DeviceRandom.random: dtype {dtype} is not float32 or float64")
        shape = () if size is None else (tuple(size) if hasattr(size, "__len__") else (int(size),))
        out = cupy.empty(shape, dtype=dtype)
        if out.size:
            _RANDOM_KERNEL[0](self.seed, self.offset, out)
        self.offset += int(out.size)
        return out


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


_KERNELS: dict = {}


def cuda_elementwise(sources: dict, name: str, preamble: str = "", prefix: str = "convnet_"):
    """A CuPy ElementwiseKernel made once from sources[name] = (in_params, out_params, body).

    Every module that has CUDA twins of its NumPy hot loops keeps their sources in such a dict and gets the
    compiled kernels here, on first use (CuPy compiles for the current device when the kernel first runs)."""
    key = (prefix + name, preamble)
    kernel = _KERNELS.get(key)
    if kernel is None:
        import cupy

        in_params, out_params, body = sources[name]
        kernel = cupy.ElementwiseKernel(in_params, out_params, body, prefix + name, preamble=preamble)
        _KERNELS[key] = kernel
    return kernel
