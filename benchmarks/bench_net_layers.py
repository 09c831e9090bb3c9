"""Each conv and fc layer of a bench_network.py network, at its shape in the network: convnet (NumPy, CPU)
against torch.nn.Conv2d / Linear (CPU), forward + backward, with GFLOP/s and % of the measured SGEMM peak.

    python benchmarks/bench_net_layers.py [--threads 2] [--net cifar18] [--batch 128] [--steps 9] [--warmup 2]
                                          [--algo direct|winograd]

A layer fed by the data layer computes no input gradient (on both sides). The fused neuron (relu) of a conv
runs on our side as in the network; torch's twin is the bare Conv2d (its relu is a separate layer there).
The two sides take turns step by step (see bench_network.py); medians. GFLOP = the direct FLOPs of forward
+ backward (flops.py); GF/s = those over the median time; % = of the SGEMM peak (numpy.matmul 2048^3 on the
same threads, the fastest of several runs, measured before and after the layers, the higher one). --algo
fixes the 3x3 path (CONVNET_CONV_ALGO) instead of timing it.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blas_threads import THREADS as _THREADS  # noqa: E402  (first: before numpy)

import argparse  # noqa: E402
import statistics  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--net", default="cifar18")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--algo", choices=("direct", "winograd"), default=None)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.algo:
        os.environ["CONVNET_CONV_ALGO"] = args.algo
    import numpy as np
    import torch

    import bench_network as bn
    from bench_gpu import torch_layer
    from flops import layer_flops, rate, sgemm_peak
    from convnet_cli.layers.base import Context
    from convnet_cli.net import Net

    torch.set_num_threads(args.threads)
    nets = bn.networks(torch)
    layer_def, params_text, shape, _, _ = nets[args.net]
    net = Net.from_text(layer_def, params_text, shape, seed=0)
    peak = sgemm_peak()
    rng = np.random.default_rng(1)
    data_fed = {l.name for l in net.layers if l.in_names and all(net.by_name[i].is_data for i in l.in_names)}
    print(f"{args.net}: conv and fc layers, forward + backward, batch {args.batch}, {args.threads} thread(s), "
          f"median of {args.steps}")
    header = (f"{'layer':<34}{'ours ms':>9}{'torch ms':>10}{'ratio':>7}{'GFLOP':>7}{'ours GF/s':>11}{'%peak':>7}"
              f"{'torch GF/s':>12}{'%peak':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    for layer in net.layers:
        if layer.type not in ("conv", "fc"):
            continue
        c, h, w = layer.in_shapes[0]
        co, ho, wo = layer.out_shape
        params = net.params[layer.name]
        x = rng.standard_normal((args.batch, h, w, c)).astype(np.float32)
        dout = rng.standard_normal((args.batch, ho, wo, co)).astype(np.float32)
        fed = layer.name in data_fed
        ctx = Context(xp=np, train=True, algos={})

        def ours(layer=layer, x=x, dout=dout, params=params, ctx=ctx):
            _, cache = layer.forward([x], params, ctx)
            layer.backward(dout, cache, params, ctx)

        module = torch_layer(torch, layer)
        tx = torch.randn(args.batch, c, h, w, requires_grad=not fed)
        with torch.no_grad():
            tdy = torch.randn_like(module(tx))

        def theirs(module=module, tx=tx, tdy=tdy):
            module.zero_grad(set_to_none=True)
            tx.grad = None
            module(tx).backward(tdy)

        t_ours, t_torch = bn.timed_steps([ours, theirs], args.warmup, args.steps)
        a, b = 1000 * statistics.median(t_ours), 1000 * statistics.median(t_torch)
        f, bwd = layer_flops(layer, args.batch, not fed)
        rows.append((layer, fed, a, b, f + bwd, ctx.algos))
    peak = max(peak, sgemm_peak())
    for layer, fed, a, b, fl, algos in rows:
        c, h, w = layer.in_shapes[0]
        if layer.type == "conv":
            g = layer.geo
            what = f"conv {g.f} {g.fh}x{g.fw}" + (f" s{g.sh}" if (g.sh, g.sw) != (1, 1) else "")
        else:
            what = f"fc {layer.props.outputs}"
        label = f"{layer.name} {what} {c}x{h}x{w}" + (" (no dx)" if fed else "")
        ro, rt = rate(fl, a), rate(fl, b)
        print(f"{label:<34}{a:>9.1f}{b:>10.1f}{a / b:>7.2f}{fl / 1e9:>7.2f}{ro:>11.1f}{100 * ro / peak:>6.0f}%"
              f"{rt:>12.1f}{100 * rt / peak:>6.0f}%" + (f"  {sorted(set(algos.values()))}" if algos else ""))
    from flops import machine_line

    print(machine_line())
    print(f"SGEMM peak {peak:.0f} GFLOP/s on {args.threads} thread(s)")


if __name__ == "__main__":
    main()
