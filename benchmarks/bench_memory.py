"""Peak memory of training: convnet (NumPy, CPU) against the same network in PyTorch CPU, measured the same way.

    python benchmarks/bench_memory.py [--threads 2] [--batch 128] [--steps 3] [--nets upcall,cifar18,keywords]

The networks, data and optimizers are bench_network.py's. Each side runs in a fresh process of its own (so
neither inherits the other's freed memory), which imports its libraries, builds the model and the random
minibatch, then runs --steps training steps. Measured from the process's resident set (Linux /proc/self):
`model + data` = resident memory after building them minus that after the imports; `step peak` = the
highest resident memory during the steps (VmHWM, reset just before them through /proc/self/clear_refs)
minus that after the build: what training adds on top of the weights and the minibatch (activations,
caches, gradients, optimizer state, scratch). The same allocator (glibc malloc) serves both sides; freed
memory that malloc keeps counts as long as it is resident, on both sides alike.
ratio = convnet / torch (below 1: convnet needs less).

`--detail` adds, for convnet, tracemalloc's peak of NumPy's allocations during one step (NumPy reports its
array buffers to tracemalloc; PyTorch does not, so there is no torch column for it).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blas_threads import THREADS as _THREADS  # noqa: E402,F401  (first: before numpy)

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak():
    """Reset VmHWM to the current resident size (Linux 4.0+: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def measure(side: str, name: str, batch: int, steps: int, detail: bool) -> dict:
    """Run in the child: build `name` on `side` ('ours' or 'torch'), train `steps` steps, return MB figures."""
    import numpy as np

    if side == "torch":
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    else:
        torch = None
        from convnet_cli.net import Net
    import bench_network as bn

    nets = bn.networks(torch)  # torch None: convnet's process never imports torch
    layer_def, params, shape, classes, make_torch = nets[name]
    base = _status_kb("VmRSS")
    if side == "ours":
        step, _ = bn.ours_step(np, Net, layer_def, params, shape, classes, batch)
    else:
        torch.manual_seed(0)
        step = bn.torch_net_step(torch, name, make_torch(), shape, classes, batch)
    built = _status_kb("VmRSS")
    _reset_peak()
    for _ in range(steps):
        step()
    out = {"model_data_mb": (built - base) / 1024, "step_peak_mb": (_status_kb("VmHWM") - built) / 1024}
    if detail and side == "ours":
        import tracemalloc

        tracemalloc.start()
        step()
        out["numpy_traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="training steps measured (the first allocates the "
                                                        "optimizer state)")
    ap.add_argument("--nets", default="upcall,cifar18,keywords")
    ap.add_argument("--detail", action="store_true", help="also tracemalloc's peak of convnet's NumPy arrays")
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "NET"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.batch, args.steps, args.detail)))
        return
    if not os.path.exists("/proc/self/clear_refs"):
        raise SystemExit("bench_memory.py reads /proc/self (Linux): not available here")
    from flops import machine_line

    print(machine_line())
    print(f"peak resident memory of training, float32, batch {args.batch}, {args.threads} thread(s), "
          f"{args.steps} steps, each side in a fresh process; MB")
    header = (f"{'network':<12}{'ours model+data':>16}{'torch model+data':>17}{'ours step peak':>15}"
              f"{'torch step peak':>16}{'ratio':>7}" + (f"{'ours numpy traced':>18}" if args.detail else ""))
    print(header)
    print("-" * len(header))
    for name in [n.strip() for n in args.nets.split(",") if n.strip()]:
        res = {}
        for side in ("ours", "torch"):
            cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads), "--batch",
                   str(args.batch), "--steps", str(args.steps), "--child", side, name] + (
                ["--detail"] if args.detail else [])
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{side} {name} failed:\n{done.stderr}")
            res[side] = json.loads(done.stdout.strip().splitlines()[-1])
        o, t = res["ours"], res["torch"]
        line = (f"{name:<12}{o['model_data_mb']:>16.1f}{t['model_data_mb']:>17.1f}{o['step_peak_mb']:>15.1f}"
                f"{t['step_peak_mb']:>16.1f}{o['step_peak_mb'] / t['step_peak_mb']:>7.2f}")
        if args.detail:
            line += f"{o['numpy_traced_peak_mb']:>18.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
