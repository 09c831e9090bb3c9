"""Scaling estimate for data-parallel training (`mpiexec -n K convnet train`), on paper from measurements.

    python benchmarks/bench_allreduce.py [--mini 128] [--steps 3] [--reps 30] [--configs keywords,upcall]
                                         [--step-ms keywords=369,...]

For each starter config in convnet_cli/layer_configs/ it reports:
  - the bytes each process sends into the one Allreduce per step: every learned parameter's gradient
    (float32) plus the costs and the stop flag, and the number of small batchnorm sums per step (two per
    batchnorm layer: forward and backward, (2C+1) float64 each);
  - the measured time of an MPI Allreduce of that size between 2 processes on this machine (loopback,
    `mpiexec -n 2`, shared memory), median of --reps, and of an 8-byte one (the latency);
  - the measured single-process step time (forward + backward + update, minibatch --mini, median of
    --steps after one warm-up), NumPy on this machine's CPU;
    (--step-ms NAME=MS,...: take these step times instead, e.g. bench_network.py's on a quiet machine);
  - the projected speed-up for K = 2..64 processes over a network of 10 and 100 Gb/s with the ring
    Allreduce model:  t(K) = t1 / K + 2 (K-1)/K * bytes / bandwidth + 2 (K-1) a + n_bn * 2 log2(K) a,
    with a the per-message latency (25 us for 10 Gb/s Ethernet/TCP, 3 us for 100 Gb/s InfiniBand/RoCE;
    assumptions, not measurements), speed-up = t1 / t(K).

The model is optimistic where it ignores things: the compute of 1/K of a minibatch is taken as 1/K of the
time (small per-process minibatches use the BLAS less well), every process reads every batch file, and
communication does not overlap compute (it does not: the Allreduce runs after backward).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

CONFIGS = os.path.join(ROOT, "convnet_cli", "layer_configs")
KS = (2, 4, 8, 16, 32, 64)
NETWORKS = {"10 Gb/s": (10e9 / 8, 25e-6), "100 Gb/s": (100e9 / 8, 3e-6)}


def starter_configs():
    """[(name, layer-def, params, data shape (C, H, W))] of the packaged configs."""
    from convnet_cli.ingest.features import FeatureSpec

    out = []
    for path in sorted(glob.glob(os.path.join(CONFIGS, "*.yaml"))):
        if path.endswith(("-params.yaml", "-features.yaml")):
            continue
        base = path[:-5]
        params = base + "-params.yaml"
        feats = [f for f in (base + "-features.yaml", base.replace("-small", "") + "-features.yaml")
                 if os.path.exists(f)]
        shape = tuple(FeatureSpec.from_file(feats[0]).shape) if feats else (3, 32, 32)  # cifar: 32x32 RGB
        out.append((os.path.basename(base), path, params if os.path.exists(params) else None, shape))
    return out


def exchange(net) -> tuple:
    """(bytes in the step's Allreduce, batchnorm sums per step) for a Net."""
    grads = sum(int(a.size) for l in net.layers for k, a in net.params[l.name].items() if k in l.learned)
    tail = sum(1 + 3 for l in net.layers if l.is_cost) + 1  # cost, metrics, stop flag (float32 each)
    bn = sum(2 for l in net.layers if l.type == "batchnorm")
    return 4 * (grads + tail), bn


def step_time(net, shape, mini, steps) -> float:
    c, h, w = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((mini, h, w, c)).astype(np.float32)
    k = next(l for l in net.layers if l.type == "cost.logreg").in_shapes[1][0]
    y = rng.integers(0, k, mini).astype(np.int32)
    times = []
    for s in range(steps + 1):
        t0 = time.perf_counter()
        net.forward({0: x, 1: y}, train=True, rng=np.random.default_rng(s))
        net.update(net.backward(), 0.0, 0.0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def measure_allreduce(sizes, reps):
    """Run under mpiexec -n 2: print {bytes: median seconds} as JSON on rank 0."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    out = {}
    for nbytes in sizes:
        buf = np.ones(max(1, nbytes // 4), np.float32)
        for _ in range(3):
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        times = []
        for _ in range(reps):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            times.append(time.perf_counter() - t0)
        out[nbytes] = statistics.median(comm.allreduce(t, op=MPI.MAX) for t in times)
    if comm.Get_rank() == 0:
        print(json.dumps(out))


def projected(t1, nbytes, n_bn, k, bandwidth, latency) -> float:
    comm = 2 * (k - 1) / k * nbytes / bandwidth + 2 * (k - 1) * latency + n_bn * 2 * math.log2(k) * latency
    return t1 / (t1 / k + comm)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mini", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--configs", help="comma list of config names (default: all)")
    ap.add_argument("--step-ms", default="", help="NAME=MS,...: single-process step times to use instead of measuring")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the mpiexec'd part
    a = ap.parse_args()
    if a.measure:
        measure_allreduce([int(s) for s in a.measure.split(",")], a.reps)
        return
    from convnet_cli.net import Net

    given = {k: float(v) / 1e3 for k, v in (p.split("=") for p in a.step_ms.split(",") if p)}
    rows = []
    for name, layer_def, params, shape in starter_configs():
        if a.configs and name not in a.configs.split(","):
            continue
        net = Net.from_files(layer_def, params, shape)
        nbytes, n_bn = exchange(net)
        t1 = given[name] if name in given else step_time(net, shape, a.mini, a.steps)
        rows.append((name, shape, nbytes, n_bn, t1))
        print(f"{name}: {nbytes:,} bytes, {n_bn} batchnorm sums, step {t1 * 1e3:.0f} ms", file=sys.stderr)
    sizes = sorted({r[2] for r in rows} | {8})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(["mpiexec", "-n", "2", sys.executable, os.path.abspath(__file__), "--measure",
                        ",".join(map(str, sizes)), "--reps", str(a.reps)],
                       capture_output=True, text=True, env=env, check=True)
    measured = {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    print(f"loopback Allreduce latency (8 bytes, 2 processes): {measured[8] * 1e6:.1f} us\n")
    print("| config | input (C,H,W) | bytes per step | batchnorm sums | Allreduce, 2 processes loopback (ms) "
          f"| step, 1 process, minibatch {a.mini} (ms) |")
    print("|---|---|---|---|---|---|")
    for name, shape, nbytes, n_bn, t1 in rows:
        print(f"| {name} | {'x'.join(map(str, shape))} | {nbytes:,} | {n_bn} | {measured[nbytes] * 1e3:.3f} "
              f"| {t1 * 1e3:.0f} |")
    for net_name, (bw, lat) in NETWORKS.items():
        print(f"\nprojected speed-up at {net_name} (latency {lat * 1e6:.0f} us):\n")
        print("| config | " + " | ".join(f"K={k}" for k in KS) + " |")
        print("|---|" + "---|" * len(KS))
        for name, shape, nbytes, n_bn, t1 in rows:
            print(f"| {name} | " + " | ".join(f"{projected(t1, nbytes, n_bn, k, bw, lat):.1f}" for k in KS) + " |")


if __name__ == "__main__":
    main()
