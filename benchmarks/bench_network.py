"""One whole training step (forward + backward + update) of a network: convnet (NumPy, CPU) against the same
network in PyTorch CPU.

    python benchmarks/bench_network.py [--threads 2] [--batch 128] [--steps 10] [--warmup 2]
                                       [--nets upcall,cifar18,keywords,whale-birnn-small,whale-birnn]
                                       [--norm] [--big-batch 16]

Five networks, written in our layer-def YAML (keywords: the packaged layer_configs/keywords.yaml) and in torch.nn:
  upcall   input (1, 64, 48), logmel-like: conv 32 5x5 pad 2 relu, pool max 3/2, conv 32 5x5 pad 2 relu,
           pool max 3/2, conv 64 3x3 pad 1 relu, pool avg over the whole map, fc 2, softmax, logreg
  cifar18  cuda-convnet's CIFAR-10 "18%" net, input (3, 32, 32): conv 32 5x5 pad 2, pool max 3/2, relu,
           conv 32 5x5 pad 2 relu, pool avg 3/2, conv 64 5x5 pad 2 relu, pool avg 3/2, fc 10, softmax, logreg
           (its rnorm layers are left out on both sides; --norm adds cmrnorm size 3 after pool1 and pool2,
           torch.nn.LocalResponseNorm on the torch side)
  keywords input (1, 40, 98): conv 3x3 + batchnorm + relu + max pool 2, three times (32, 48, 64 filters),
           conv 96 3x3 + batchnorm + relu, global average pool, dropout, fc 10, softmax, logreg
  whale-birnn-small  the packaged layer_configs/whale-birnn-small.yaml with its params file (rmsprop, clipNorm
           on the GRUs), input (1, 81, 49): three convs, a bidirectional GRU of 32 and a GRU of 32 over the
           10 time steps, the last step, fc 16 + batchnorm + relu, fc 2; torch: nn.GRU(bidirectional=True)
  whale-birnn  neon's whale-call net, layer_configs/whale-birnn.yaml (three bidirectional relu RNNs of 256
           after convs of 128, 256, 512 filters); torch: nn.RNN(nonlinearity="relu", bidirectional=True);
           run at --big-batch (16 by default: a step at 128 takes seconds on two cores)

Both sides: float32, sgd with momentum 0.9 and weight decay on the weights (the whale nets: rmsprop and the
gradient-norm clipping of their params files, as benchmarks/bench_gpu.py's torch twins, which they share), the same thread count (BLAS and
OpenMP threads for NumPy, torch.set_num_threads for PyTorch), random data of the same shapes (torch NCHW,
ours NHWC). Each time is the median of --steps steps after --warmup steps; the two sides take turns step
by step, so that on a shared machine both see the same load. ratio = convnet / torch (above
1: convnet is slower). cuda-convnet's pools round the output size up (outputsX 0); torch's pools run with
ceil_mode=True so that both compute maps of the same sizes.
"""
from __future__ import annotations

import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blas_threads import THREADS as _THREADS  # noqa: E402  (first: before numpy)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # flops.py beside this file

UPCALL = """\
data: {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1: {type: conv, inputs: data, filters: 32, filterSize: 5, padding: 2, initW: 0.01, neuron: relu}
pool1: {type: pool, inputs: conv1, pool: max, sizeX: 3, stride: 2}
conv2: {type: conv, inputs: pool1, filters: 32, filterSize: 5, padding: 2, initW: 0.01, neuron: relu}
pool2: {type: pool, inputs: conv2, pool: max, sizeX: 3, stride: 2}
conv3: {type: conv, inputs: pool2, filters: 64, filterSize: 3, padding: 1, initW: 0.01, neuron: relu}
pool3: {type: pool, inputs: conv3, pool: avg, sizeX: all}
fc2: {type: fc, inputs: pool3, outputs: 2, initW: 0.01}
probs: {type: softmax, inputs: fc2}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""

CIFAR18 = """\
data: {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1: {type: conv, inputs: data, filters: 32, filterSize: 5, padding: 2, initW: 0.0001}
pool1: {type: pool, inputs: conv1, pool: max, sizeX: 3, stride: 2, neuron: relu}
NORM1
conv2: {type: conv, inputs: NORM1_OUT, filters: 32, filterSize: 5, padding: 2, initW: 0.01, neuron: relu}
pool2: {type: pool, inputs: conv2, pool: avg, sizeX: 3, stride: 2}
NORM2
conv3: {type: conv, inputs: NORM2_OUT, filters: 64, filterSize: 5, padding: 2, initW: 0.01, neuron: relu}
pool3: {type: pool, inputs: conv3, pool: avg, sizeX: 3, stride: 2}
fc10: {type: fc, inputs: pool3, outputs: 10, initW: 0.01}
probs: {type: softmax, inputs: fc10}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""

PARAMS = """\
DEFAULT: {updater: sgd, epsW: 0.001, epsB: 0.002, momW: 0.9, momB: 0.9, wc: 0.004}
NORMS
"""


def cifar18_yaml(norm: bool) -> str:
    text = CIFAR18
    for i, src in ((1, "pool1"), (2, "pool2")):
        text = text.replace(f"NORM{i}_OUT", f"rnorm{i}" if norm else src)
        text = text.replace(f"NORM{i}\n", f"rnorm{i}: {{type: cmrnorm, inputs: {src}, size: 3}}\n" if norm else "")
    return text


def params_yaml(norm: bool) -> str:
    norms = ("rnorm1: {scale: 0.00005, pow: 0.75}\nrnorm2: {scale: 0.00005, pow: 0.75}\n" if norm else "")
    return PARAMS.replace("NORMS\n", norms)


def torch_upcall(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, 2))


def torch_cifar18(torch, norm: bool):
    nn = torch.nn

    def lrn():
        return [nn.LocalResponseNorm(3, alpha=0.00005, beta=0.75, k=1.0)] if norm else []

    return nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(), *lrn(),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True), *lrn(),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 10))


def keywords_yaml() -> str:
    """The packaged layer_configs/keywords.yaml (conv-bn-relu-pool x3, conv-bn-relu, global pool, dropout)."""
    from convnet_cli.demo import config_path

    with open(config_path("keywords.yaml"), encoding="utf-8") as f:
        return f.read()


def torch_keywords(torch):
    nn = torch.nn

    def block(cin, cout, pool=True):
        layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout, momentum=0.1), nn.ReLU()]
        return layers + ([nn.MaxPool2d(2, 2, ceil_mode=True)] if pool else [])

    return nn.Sequential(*block(1, 32), *block(32, 48), *block(48, 64), *block(64, 96, pool=False),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(96, 10))


def timed_medians(steps_fns, warmup: int, steps: int) -> list:
    """Median ms of each step function; the functions take turns, step by step, so that both see the same
    load on a machine shared with other work."""
    return [1000 * statistics.median(t) for t in timed_steps(steps_fns, warmup, steps)]


def timed_steps(steps_fns, warmup: int, steps: int) -> list:
    """Seconds of every timed step of each function (taking turns, as timed_medians)."""
    for fn in steps_fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in steps_fns]
    for _ in range(steps):
        for fn, t in zip(steps_fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return times


def ours_step(np, Net, layer_def, params, shape, classes, batch):
    net = Net.from_text(layer_def, params, shape, seed=0)
    c, h, w = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, h, w, c)).astype(np.float32)
    y = rng.integers(0, classes, batch)
    step_no = [0]

    def step():
        # a fresh generator per step, as the trainer seeds one per minibatch (dropout masks)
        costs = net.forward({0: x, 1: y}, train=True, rng=np.random.default_rng(step_no[0]))
        grads = net.backward()
        net.update(grads, progress=step_no[0] / 1000, epoch=0.0)
        step_no[0] += 1
        return costs

    return step, net


def torch_step(torch, model, shape, classes, batch):
    c, h, w = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, h, w, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    return torch_sgd_step(torch, model, x, y)


def torch_sgd_step(torch, model, x, y, read_back: bool = False):
    """The torch side's SGD step (momentum 0.9, decay on the weights, as PARAMS) on x, y; read_back: the loss
    comes to the host each step, as our trainer reads its cost (bench_gpu.py: a GPU sync)."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.SGD([{"params": weights, "lr": 0.001, "weight_decay": 0.004},
                           {"params": biases, "lr": 0.002, "weight_decay": 0.0}], lr=0.001, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.item() if read_back else loss

    return step


def networks(torch, norm: bool = False) -> dict:
    """name -> (layer def text, params text, input (C, H, W), classes, function making the torch model);
    torch None: the convnet side alone (the functions are not to be called)."""
    nets = {
        "upcall": (UPCALL, PARAMS.replace("NORMS\n", ""), (1, 64, 48), 2, lambda: torch_upcall(torch)),
        "cifar18": (cifar18_yaml(norm), params_yaml(norm), (3, 32, 32), 10,
                    lambda: torch_cifar18(torch, norm)),
        "keywords": (keywords_yaml(), PARAMS.replace("NORMS\n", "drop: {keep: 0.7}\n"), (1, 40, 98), 10,
                     lambda: torch_keywords(torch)),
    }
    from bench_gpu import torch_nets
    from convnet_cli.demo import config_path

    twins = torch_nets(torch) if torch is not None else {}
    for whale in ("whale-birnn-small", "whale-birnn"):
        texts = []
        for f in (f"{whale}.yaml", f"{whale}-params.yaml"):
            with open(config_path(f), encoding="utf-8") as fh:
                texts.append(fh.read())
        nets[whale] = (texts[0], texts[1], (1, 81, 49), 2, twins.get(whale))
    return nets


def torch_net_step(torch, name, model, shape, classes, batch):
    """The torch side's training step of network `name` (the whale nets: bench_gpu.py's, with their
    optimizer and clipping)."""
    if not name.startswith("whale"):
        return torch_step(torch, model, shape, classes, batch)
    from bench_gpu import torch_train_step

    c, h, w = shape
    g = torch.Generator().manual_seed(0)
    return torch_train_step(torch, name, model, torch.randn(batch, c, h, w, generator=g),
                            torch.randint(0, classes, (batch,), generator=g))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for both NumPy's BLAS and PyTorch")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--nets", default="upcall,cifar18,keywords,whale-birnn-small,whale-birnn")
    ap.add_argument("--big-batch", type=int, default=16, help="minibatch of whale-birnn (the others: --batch)")
    ap.add_argument("--norm", action="store_true", help="cifar18 with its cmrnorm layers (LocalResponseNorm)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads != _THREADS:  # main() called with an argv other than the command line's
        raise SystemExit("--threads must be given on the command line (it is read before numpy is imported)")
    import numpy as np
    import torch

    from convnet_cli.net import Net

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    nets = networks(torch, args.norm)
    from flops import rate, sgemm_peak, step_flops

    peak = sgemm_peak()
    print(f"one training step (forward + backward + update), float32, batch {args.batch}, "
          f"{args.threads} thread(s); numpy {np.__version__}, torch {torch.__version__}; "
          f"median of {args.steps} steps after {args.warmup}")
    from flops import machine_line

    print(machine_line())
    print(f"SGEMM peak (numpy.matmul 2048^3 float32, the fastest run; measured now and again after each network, "
          f"the highest so far counts): {peak:.0f} GFLOP/s now; GF/s below = the direct conv/fc FLOPs of the step "
          f"over its time, and % of that peak")
    print("ratio = median ours / median torch; per-round = median of (ours / torch) over the rounds; best = "
          "fastest ours / fastest torch; GF/s from the medians; 'best' columns: % of peak of the fastest steps")
    header = (f"{'network':<20}{'ours ms/step':>14}{'torch ms/step':>15}{'ratio':>8}{'round':>8}{'best':>7}"
              f"{'GFLOP':>8}{'ours GF/s':>11}{'%peak':>7}{'torch GF/s':>12}{'%peak':>7}{'ours min':>10}"
              f"{'torch min':>10}"
              f"{'peak':>7}{'ours best':>10}{'torch best':>11}")
    print(header)
    print("-" * len(header))
    for name in [n.strip() for n in args.nets.split(",") if n.strip()]:
        if name not in nets:
            raise SystemExit(f"--nets: unknown network '{name}'; choose from {', '.join(nets)}")
        layer_def, params, shape, classes, make_torch = nets[name]
        batch = args.big_batch if name == "whale-birnn" else args.batch
        ours_fn, net = ours_step(np, Net, layer_def, params, shape, classes, batch)
        model = make_torch()
        n_ours = net.num_params()
        n_torch = sum(p.numel() for p in model.parameters())
        assert n_ours == n_torch, f"{name}: {n_ours} parameters here, {n_torch} in the torch model"
        theirs_fn = torch_net_step(torch, name, model, shape, classes, batch)
        t_ours, t_torch = timed_steps([ours_fn, theirs_fn], args.warmup, args.steps)
        ours, theirs = 1000 * statistics.median(t_ours), 1000 * statistics.median(t_torch)
        # on a shared machine the load changes from step to step: the ratio of the two steps of each round
        # (taken back to back) varies less than the ratio of the medians; its median is printed too, and
        # the ratio of the fastest steps (what each side reaches when the machine is quiet)
        round_ratio = statistics.median(a / b for a, b in zip(t_ours, t_torch))
        best_ratio = min(t_ours) / min(t_torch)
        label = name + ("+norm" if name == "cifar18" and args.norm else "") + (
            f"@{batch}" if batch != args.batch else "")
        peak = max(peak, sgemm_peak())  # again: on a shared machine the first measurement may have met load
        fl = step_flops(net, batch)
        r_ours, r_torch = rate(fl, ours), rate(fl, theirs)
        print(f"{label:<20}{ours:>14.1f}{theirs:>15.1f}{ours / theirs:>8.2f}{round_ratio:>8.2f}{best_ratio:>7.2f}"
              f"{fl / 1e9:>8.2f}{r_ours:>11.1f}{100 * r_ours / peak:>6.0f}%"
              f"{r_torch:>12.1f}{100 * r_torch / peak:>6.0f}%"
              f"{1000 * min(t_ours):>10.1f}{1000 * min(t_torch):>10.1f}{peak:>7.0f}"
              f"{100 * rate(fl, 1000 * min(t_ours)) / peak:>9.0f}%{100 * rate(fl, 1000 * min(t_torch)) / peak:>9.0f}%",
              flush=True)


if __name__ == "__main__":
    main()
