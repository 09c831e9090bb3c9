"""What the benchmarks measure against: this machine's SGEMM peak, and the FLOPs of a layer or a training step.

    sgemm_peak()        -> GFLOP/s of a large float32 matmul (2048^3, the fastest of several), i.e. what NumPy's
                           BLAS reaches on these cores with everything in its favour
    layer_flops(layer, n, input_grad)  -> (forward, backward) FLOPs of one conv / local / fc layer
    step_flops(net, n)  -> FLOPs of one training step (forward + backward) of a Net

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
