"""Recurrent layers, forward + backward over a whole sequence: convnet (NumPy, CPU) against PyTorch CPU.

    python benchmarks/bench_recurrent.py [--threads 1] [--lengths 50,100,200] [--batch 32]
                                         [--features 64] [--hidden 128] [--repeats 5]

Both sides run float32 with the same number of threads (BLAS/OpenMP for NumPy, torch.set_num_threads for
PyTorch). convnet runs twice: with the NumPy cells (the reference) and, when numba is installed (the `jit`
extra), with the fused numba cells of recurrent_jit.py (lstm and gru; rnn has no JIT cell). The sides take
turns run by run, so that on a shared machine they see the same load; each time is the median of --repeats
runs after one warm-up run. ratio = convnet time / torch time (above 1: convnet is slower); jit ratio = the
JIT path's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="threads for both NumPy's BLAS and PyTorch")
    ap.add_argument("--lengths", default="50,100,200", help="sequence lengths, comma separated")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--features", type=int, default=64, help="input features per step")
    ap.add_argument("--hidden", type=int, default=128, help="hidden units")
    ap.add_argument("--types", default="rnn,lstm,gru")
    ap.add_argument("--repeats", type=int, default=5)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # The thread count must be fixed before numpy (and its BLAS) is first imported.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import numpy as np
    import torch

    from convnet_cli.config.layer_def import parse_props
    from convnet_cli.layers.base import Context
    from convnet_cli.layers.registry import layer_class

    torch.set_num_threads(args.threads)
    from convnet_cli.layers import recurrent_jit

    jit = recurrent_jit.available()
    contexts = {path: Context(xp=np, train=True, algos={recurrent_jit.CELL_KEY: path})
                for path in (("numpy", "jit") if jit else ("numpy",))}

    def median_times(fns):
        """Median seconds of each function; they take turns run by run."""
        for fn in fns:
            fn()
        times = [[] for _ in fns]
        for _ in range(args.repeats):
            for fn, t in zip(fns, times):
                t0 = time.perf_counter()
                fn()
                t.append(time.perf_counter() - t0)
        return [statistics.median(t) for t in times]

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from flops import machine_line

    print(machine_line())
    print(f"forward + backward, float32, batch {args.batch}, {args.features} features -> {args.hidden} hidden, "
          f"{args.threads} thread(s); numpy {np.__version__}, torch {torch.__version__}; median of {args.repeats}")
    if not jit:
        print(f"no JIT column: {recurrent_jit.unavailable_reason()}")
    header = (f"{'layer':<6}{'steps':>6}{'convnet ms':>12}{'jit ms':>8}{'torch ms':>10}{'ratio':>7}"
              f"{'jit ratio':>10}")
    print(header)
    print("-" * len(header))
    torch_class = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
    for type_name in args.types.split(","):
        cls = layer_class(type_name)
        for steps in (int(s) for s in args.lengths.split(",")):
            shape = (args.features, 1, steps)  # (C, H, W): features per step, sequence over W
            layer = cls("L", parse_props(cls, {"outputs": args.hidden}, "L", "bench"), [shape], ["x"], "bench")
            params = layer.init_params(np.random.default_rng(0))
            rng = np.random.default_rng(1)
            x = rng.standard_normal((args.batch, 1, steps, args.features)).astype(np.float32)
            dout = rng.standard_normal((args.batch, 1, steps, args.hidden)).astype(np.float32)

            def ours(ctx):
                out, cache = layer.forward([x], params, ctx)
                layer.backward(dout, cache, params, ctx)

            module = torch_class[type_name](args.features, args.hidden)
            with torch.no_grad():
                for name, value in params.items():
                    getattr(module, name + "_l0").copy_(torch.from_numpy(value))
            seq = torch.from_numpy(x[:, 0].transpose(1, 0, 2).copy()).requires_grad_(True)
            tdout = torch.from_numpy(dout[:, 0].transpose(1, 0, 2).copy())

            def theirs():
                module.zero_grad(set_to_none=True)
                seq.grad = None
                out = module(seq)[0]
                out.backward(tdout)

            with_jit = jit and layer.has_jit
            fns = [lambda: ours(contexts["numpy"]), theirs] + ([lambda: ours(contexts["jit"])] if with_jit else [])
            a, b, *j = median_times(fns)
            jit_ms, jit_ratio = (f"{j[0] * 1e3:>8.1f}", f"{j[0] / b:>10.2f}") if j else (f"{'-':>8}", f"{'-':>10}")
            print(f"{type_name:<6}{steps:>6}{a * 1e3:>12.1f}{jit_ms}{b * 1e3:>10.1f}{a / b:>7.2f}{jit_ratio}",
                  flush=True)


if __name__ == "__main__":
    main()
