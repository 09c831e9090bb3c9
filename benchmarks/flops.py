"""What the benchmarks measure against: this machine's SGEMM peak, and the FLOPs of a layer or a training step.

    sgemm_peak()        -> GFLOP/s of a large float32 matmul (2048^3, the fastest of several), i.e. what NumPy's
                           BLAS reaches on these cores with everything in its favour
    layer_flops(layer, n, input_grad)  -> (forward, backward) FLOPs of one conv / local / fc layer
    step_flops(net, n)  -> FLOPs of one training step (forward + backward) of a Net
    machine_line()      -> the CPU (model, AVX2 or AVX-512) and the kernels NumPy's BLAS runs, for the tables

The kernels matter: OpenBLAS picks them when it loads, from the CPU or from OPENBLAS_CORETYPE. Some machines
of this workplace set OPENBLAS_CORETYPE=Haswell (the AVX2 kernels) for older OpenBLAS builds; a current numpy
on such a CPU picks its AVX-512 kernels itself, about twice the SGEMM rate. To measure what a user of a
current numpy gets there, run the benchmark with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`; the line
says which kernels ran.

FLOPs are those of the direct computation (2 per multiply-add of the convolution or matrix product), also
where a layer computes fewer (Winograd): "effective" GFLOP/s = direct FLOPs / time, so that convnet and
PyTorch are rated on the same count. Element-wise layers (pooling, neurons, norms) and the updater count
nothing: they cost memory passes, not FLOPs. Recurrent layers are not counted.
"""
from __future__ import annotations

import time


def sgemm_peak(size: int = 2048, repeat: int = 7) -> float:
    """GFLOP/s of numpy.matmul on two (size, size) float32 matrices: the fastest of `repeat` runs."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    c = np.empty_like(a)
    np.matmul(a, b, out=c)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t)
    return 2 * size ** 3 / min(times) / 1e9  # a peak: the fastest run (the others met a busier machine)


def machine_line() -> str:
    """'CPU: <model> (AVX-512|AVX2|...); BLAS: <library> <version>, <kernels> kernels[, OPENBLAS_CORETYPE=..]'."""
    import os

    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    blas = "BLAS: unknown (threadpoolctl not installed)"
    try:
        import numpy  # noqa: F401  (loads its BLAS)
        import threadpoolctl

        libs = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
        if libs:
            i = libs[0]
            blas = f"BLAS: {i.get('internal_api')} {i.get('version')}, {i.get('architecture')} kernels"
    except ImportError:
        pass
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return f"CPU: {model} ({isa}); {blas}" + (f" (OPENBLAS_CORETYPE={forced})" if forced else "")


def layer_flops(layer, n: int, input_grad: bool = True) -> tuple:
    """(forward, backward) FLOPs of a conv, local or fc layer for a minibatch of n; (0, 0) for other types."""
    if layer.type in ("conv", "local"):
        geo = layer.geo
        one = 2 * n * geo.ho * geo.wo * geo.k * geo.f
        return one, one * (2 if input_grad else 1)
    if layer.type == "fc":
        fan_in = sum(c * h * w for c, h, w in layer.in_shapes)
        one = 2 * n * fan_in * layer.props.outputs
        return one, one * (2 if input_grad else 1)
    return 0, 0


def step_flops(net, n: int) -> int:
    """FLOPs of forward + backward of a Net's conv, local and fc layers (a layer fed by the data layer
    computes no input gradient)."""
    total = 0
    for layer in net.layers:
        f, b = layer_flops(layer, n, getattr(layer, "input_grads", True))
        total += f + b
    return total


def rate(flops: float, ms: float) -> float:
    """GFLOP/s of `flops` done in `ms` milliseconds."""
    return flops / (ms * 1e6) if ms > 0 else 0.0
