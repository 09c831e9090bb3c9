"""Time forward + backward of our layers against PyTorch (CPU) on the same shapes.

    python benchmarks/bench_layers.py [--threads N] [--batch 128] [--repeat 7] [--only conv] [--channels-last]

--threads sets PyTorch's intra-op threads and, through OMP_NUM_THREADS / OPENBLAS_NUM_THREADS /
MKL_NUM_THREADS (set before numpy is imported), numpy's BLAS threads. Each case runs forward and backward
(dout = ones) `--repeat` times after one warm-up run; the table shows the medians, and a total for each
group of cases (the conv and pool layers of layer_configs/keywords.yaml). The thread setting also sets the
threads of our element-wise chunk workers (pool), which read OMP_NUM_THREADS.

To add a layer type, append a Case to CASES: its type and keys as in a layer-def file, the per-case input
shape (C, H, W), and a function that computes the same thing with torch (NCHW tensors; `p` holds our
parameters as torch tensors, `layer` is our layer object for its props and shapes).
"""
from __future__ import annotations

import os
import sys


def _threads_from_argv(argv):
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return None


# BLAS reads its thread count when it is loaded: set it before numpy is imported.
_T = _threads_from_argv(sys.argv[1:])
if _T is not None:
    for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_v] = _T
    if "numpy" in sys.modules and __name__ == "__main__" and not os.environ.get("_BENCH_REEXEC"):
        # numpy came in first (a sitecustomize?): start again so that its BLAS sees the variables
        os.environ["_BENCH_REEXEC"] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # flops.py beside this file

from convnet_cli.config.layer_def import parse_props  # noqa: E402
from convnet_cli.layers.base import Context  # noqa: E402
from convnet_cli.layers.registry import layer_class  # noqa: E402
from flops import layer_flops, rate, sgemm_peak  # noqa: E402


# -- torch references -------------------------------------------------------------------------------------
def torch_conv(F, x, p, layer):
    pr = layer.props
    b = p["biases"]
    y = F.conv2d(x, p["weights"], b if b.ndim == 1 else None, stride=pr.stride, padding=pr.padding,
                 groups=pr.groups)
    return y if b.ndim == 1 else y + b


def torch_local(F, x, p, layer):
    pr = layer.props
    f, ho, wo = layer.out_shape
    g = pr.groups
    cols = F.unfold(x, pr.filterSize, padding=pr.padding, stride=pr.stride)  # (N, C*fh*fw, P)
    n, k, pos = cols.shape
    cols = cols.view(n, g, k // g, pos)
    w = p["weights"].view(pos, g, f // g, k // g)
    y = (cols.permute(3, 1, 0, 2) @ w.permute(0, 1, 3, 2))  # (P, g, N, Fg)
    y = y.permute(2, 1, 3, 0).reshape(n, f, ho, wo)
    b = p["biases"]
    return y + (b.view(1, f, 1, 1) if b.ndim == 1 else b)


def torch_pool(F, x, p, layer):
    pr = layer.props
    kh, kw = layer.size
    if pr.pool == "max":
        return F.max_pool2d(x, (kh, kw), layer.stride, ceil_mode=True)
    return F.avg_pool2d(x, (kh, kw), layer.stride, ceil_mode=True, count_include_pad=False)


@dataclass
class Case:
    type: str
    in_shape: tuple  # (C, H, W) per case
    props: dict
    torch_fn: Callable
    input_grad: bool = True  # False: a first layer, no gradient for its input (both sides)
    note: str = ""
    group: str = ""  # cases of one group (the layers of one net) are also summed at the end


CASES = [
    Case("conv", (1, 64, 101), dict(filters=32, filterSize=5, padding=2), torch_conv, note="spectrogram conv1"),
    Case("conv", (1, 64, 101), dict(filters=32, filterSize=5, padding=2), torch_conv, input_grad=False,
         note="conv1, no dx"),
    Case("conv", (32, 32, 50), dict(filters=64, filterSize=3, padding=1), torch_conv, note="conv2"),
    Case("conv", (32, 32, 50), dict(filters=64, filterSize=3), torch_conv),
    Case("conv", (32, 32, 50), dict(filters=64, filterSize=3, padding=1, stride=2), torch_conv),
    Case("conv", (64, 16, 25), dict(filters=128, filterSize=3, padding=1), torch_conv, note="conv3"),
    Case("conv", (32, 32, 50), dict(filters=64, filterSize=3, padding=1, groups=2), torch_conv),
    Case("conv", (32, 32, 50), dict(filters=64, filterSize=1), torch_conv, note="1x1"),
    Case("conv", (64, 8, 12), dict(filters=128, filterSize=[8, 12]), torch_conv, note="full-size filter"),
    Case("conv", (3, 32, 32), dict(filters=32, filterSize=5, padding=2), torch_conv, note="CIFAR conv1"),
    Case("conv", (3, 32, 32), dict(filters=32, filterSize=5, padding=2), torch_conv, input_grad=False,
         note="CIFAR conv1, no dx"),
    Case("local", (32, 16, 25), dict(filters=32, filterSize=3, padding=1), torch_local,
         note="torch: unfold + matmul"),
    Case("pool", (32, 64, 101), dict(pool="max", sizeX=3, stride=2), torch_pool),
    Case("pool", (32, 64, 101), dict(pool="avg", sizeX=3, stride=2), torch_pool),
    Case("pool", (32, 64, 100), dict(pool="max", sizeX=2), torch_pool, note="stride = size"),
    Case("pool", (64, 32, 50), dict(pool="avg", sizeX=2), torch_pool, note="stride = size"),
    Case("pool", (128, 8, 12), dict(pool="max", sizeX="all"), torch_pool, note="global"),
]

# The conv and pool layers of layer_configs/keywords.yaml (40 x 98 log-mel input), summed as one group.
KEYWORDS = [
    Case("conv", (1, 40, 98), dict(filters=32, filterSize=3, padding=1), torch_conv, input_grad=False),
    Case("pool", (32, 40, 98), dict(pool="max", sizeX=2), torch_pool),
    Case("conv", (32, 20, 49), dict(filters=48, filterSize=3, padding=1), torch_conv),
    Case("pool", (48, 20, 49), dict(pool="max", sizeX=2), torch_pool),
    Case("conv", (48, 10, 25), dict(filters=64, filterSize=3, padding=1), torch_conv),
    Case("pool", (64, 10, 25), dict(pool="max", sizeX=2), torch_pool),
    Case("conv", (64, 5, 13), dict(filters=96, filterSize=3, padding=1), torch_conv),
    Case("pool", (96, 5, 13), dict(pool="avg", sizeX="all"), torch_pool),
]
for _c in KEYWORDS:
    _c.group, _c.note = "keywords.yaml", "keywords.yaml" + ("" if _c.input_grad else ", no dx")
CASES += KEYWORDS


def build(case: Case):
    cls = layer_class(case.type)
    layer = cls("L", parse_props(cls, dict(case.props), "L", "bench"), [case.in_shape], ["data"], "bench")
    if hasattr(layer, "input_grads"):
        layer.input_grads = case.input_grad
    layer.neuron = None
    layer.set_hyper({})
    return layer


def time_ms(fns, repeat, pause=0.3):
    """Median milliseconds of each function, timed one function at a time.

    Not interleaved: the threads of OpenMP (torch) and OpenBLAS (numpy) spin for a while after each call,
    and would steal the cores from the other side's next call. The pause lets them go idle.
    """
    result = []
    for fn in fns:
        time.sleep(pause)
        fn()  # warm-up
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        result.append(statistics.median(times) * 1e3)
    return result


def run_case(case, batch, repeat, torch, channels_last=False):
    """(layer, ours ms, torch ms or None) for forward + backward of one case."""
    layer = build(case)
    rng = np.random.default_rng(0)
    params = layer.init_params(rng)
    c, h, w = case.in_shape
    x = rng.standard_normal((batch, h, w, c), dtype=np.float32)
    ctx = Context(xp=np, train=True, rng=np.random.default_rng(1))

    def ours():
        out, cache = layer.forward([x], params, ctx)
        layer.backward(np.ones_like(out), cache, params, ctx)

    fns = [ours]
    if torch is not None:
        import torch.nn.functional as F

        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        if channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        xt.requires_grad_(case.input_grad)
        pt = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in params.items()}

        def ref():
            for t in (xt, *pt.values()):
                t.grad = None
            y = case.torch_fn(F, xt, pt, layer)
            y.backward(torch.ones_like(y))

        fns.append(ref)
    ms = time_ms(fns, repeat)
    return layer, ms[0], (ms[1] if torch is not None else None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="threads for numpy's BLAS and PyTorch")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--only", default=None, help="run only cases of this layer type")
    ap.add_argument("--channels-last", action="store_true",
                    help="give torch NHWC (channels_last) tensors, as ours are, instead of its default NCHW")
    args = ap.parse_args(argv)
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("PyTorch not installed: timing our layers only", file=sys.stderr)
    threads = args.threads or (torch.get_num_threads() if torch else "default")
    layout = "NHWC (channels_last)" if args.channels_last else "NCHW"
    peak = sgemm_peak()
    print(f"batch {args.batch}, threads {threads}, median of {args.repeat}; forward + backward, float32; "
          f"torch tensors {layout}")
    print(f"SGEMM peak (numpy.matmul 2048^3 float32, measured now): {peak:.0f} GFLOP/s; GF/s = direct FLOPs of "
          f"the layer's forward + backward over its time (conv, local, fc), % = of that peak")
    head = (f"{'layer':<7} {'keys':<44} {'input (C,H,W)':<15} {'ours ms':>9} {'torch ms':>9} {'ratio':>6} "
            f"{'ours GF/s':>10} {'%pk':>4} {'torch GF/s':>10} {'%pk':>4}  note")
    print(head)
    print("-" * len(head))
    totals = {}
    for case in CASES:
        if args.only and case.type != args.only:
            continue
        layer, ours_ms, torch_ms = run_case(case, args.batch, args.repeat, torch, args.channels_last)
        keys = " ".join(f"{k}={v if not isinstance(v, list) else 'x'.join(map(str, v))}" for k, v in case.props.items())
        tms = f"{torch_ms:9.1f}" if torch_ms is not None else f"{'-':>9}"
        ratio = f"{ours_ms / torch_ms:6.2f}" if torch_ms else f"{'-':>6}"
        shape = "x".join(map(str, case.in_shape))
        fl = sum(layer_flops(layer, args.batch, case.input_grad))
        if fl:
            ro, rt = rate(fl, ours_ms), rate(fl, torch_ms or 0.0)
            gf = f"{ro:10.1f} {100 * ro / peak:3.0f}% {rt:10.1f} {100 * rt / peak:3.0f}%"
        else:
            gf = f"{'-':>10} {'':>4} {'-':>10} {'':>4}"
        print(f"{case.type:<7} {keys:<44} {shape:<15} {ours_ms:9.1f} {tms} {ratio} {gf}  {case.note}", flush=True)
        if case.group:
            o, t = totals.get(case.group, (0.0, 0.0))
            totals[case.group] = (o + ours_ms, t + (torch_ms or 0.0))
    for group, (o, t) in totals.items():
        ratio = f"{o / t:6.2f}" if t else f"{'-':>6}"
        print(f"{'total':<7} {group:<44} {'':<15} {o:9.1f} {t:9.1f} {ratio}  sum of its cases above")


if __name__ == "__main__":
    main()
