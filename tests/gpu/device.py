"""Whether the GPU tests can run here: `CUPY` is the cupy module, or None with `REASON` saying why not.

tests/gpu/conftest.py skips every test of this folder (an autouse fixture) when REASON is set, and prints
the reason once at the end of the run; test modules take `cupy` from here instead of importing it, so that
they import cleanly on a machine without CuPy."""
from __future__ import annotations


def probe():
    """(cupy, None) when CuPy loads and sees an NVIDIA GPU, else (None, reason)."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        return None, f"CuPy is not installed or does not load ({type(exc).__name__}: {exc}); the GPU tests need it"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"CuPy finds no usable NVIDIA GPU ({type(exc).__name__}: {exc})"
    if count == 0:
        return None, "no NVIDIA GPU visible to CuPy"
    return cupy, None


CUPY, REASON = probe()
