"""convnet on CuPy against PyTorch (cuDNN) on the same GPU: every layer of the networks (forward + backward,
at the shape it has in its network), one whole training step (forward, backward, update) of each network,
and the spectrogram features make-batches and detect compute (clips per second, against convnet on the CPU
and torchaudio on the GPU).

    python benchmarks/bench_gpu.py [--batch 128] [--steps 20] [--warmup 5]
                                   [--nets upcall,whale-birnn-small,whale-birnn,upcall64,cifar18,keywords]
                                   [--layer-nets upcall,whale-birnn-small,whale-birnn] [--no-layers]
                                   [--no-features] [--tf32]

The networks are the packaged layer_configs/<net>.yaml with their <net>-params.yaml (upcall: input
(1, 40, 75), adam; whale-birnn and whale-birnn-small: input (1, 81, 49), rmsprop, clipNorm on the recurrent
layers), against the same networks written by hand in torch.nn below (NCHW; batch norm, max pools with
ceil_mode=True, which is cuda-convnet's output rule, bidirectional RNN/GRU over the time axis), with the same
optimizer and clipping; and benchmarks/bench_network.py's upcall (there at input (1, 64, 48), here named
upcall64), cifar18 and keywords with their torch twins, trained by SGD with momentum as there. Both sides: float32, random data of the same shapes, torch.backends.cudnn.benchmark
= True. TF32 is off on both sides unless --tf32 (then CUPY_TF32=1 for CuPy's GEMMs, and torch's matmul and
cuDNN TF32 flags on). Each time is the median over --steps steps after --warmup steps, with the device
synchronized before and after each timed step; the two sides take turns step by step. A training step on
both sides reads its cost back to the host once (our trainer does, to check it; torch: loss.item()).
ratio = convnet / torch (below 1: convnet is faster). Target: the whole training step within 2x.

Without a GPU (no CuPy, or CuPy sees no device) the script says so and exits 0.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# benchmarks/bench_network.py's networks: name here -> name there
BENCH_NETWORK = {"upcall64": "upcall", "cifar18": "cifar18", "keywords": "keywords"}
NETS = {  # name -> (layer def, params, input (C, H, W))
    "upcall": ("upcall.yaml", "upcall-params.yaml", (1, 40, 75)),
    "whale-birnn-small": ("whale-birnn-small.yaml", "whale-birnn-small-params.yaml", (1, 81, 49)),
    "whale-birnn": ("whale-birnn.yaml", "whale-birnn-params.yaml", (1, 81, 49)),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (the median is reported)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--nets", default=",".join(list(NETS) + list(BENCH_NETWORK)))
    ap.add_argument("--layer-nets", default=",".join(NETS), help="the networks whose layers are timed one by one")
    ap.add_argument("--no-layers", action="store_true", help="only the whole training steps")
    ap.add_argument("--no-features", action="store_true", help="skip the features table")
    ap.add_argument("--clips", type=int, default=2048, help="clips of the features table")
    ap.add_argument("--tf32", action="store_true", help="TF32 GEMMs/convolutions on both sides")
    ap.add_argument("--profile", default="", help="NET[,NET]: cProfile 20 of our training steps of each (where "
                                                  "the host's time goes), printed after the tables")
    return ap.parse_args(argv)


def gpu_or_reason():
    """(cupy, None) or (None, why there is no GPU to run on)."""
    try:
        import cupy
    except Exception as exc:
        return None, f"CuPy is not installed or does not load ({type(exc).__name__}: {exc})"
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return None, "CuPy sees no NVIDIA GPU"
    except Exception as exc:
        return None, f"CuPy finds no usable NVIDIA GPU ({type(exc).__name__}: {exc})"
    return cupy, None


# -- timing ----------------------------------------------------------------------------------------------------
def timed_medians(fns, warmup, steps, sync):
    """Median ms of each function (None: skipped); they take turns step by step, synchronized around each."""
    live = [f for f in fns if f is not None]
    for f in live:
        for _ in range(warmup):
            f()
    sync()
    times = [[] for _ in fns]
    for _ in range(steps):
        for f, t in zip(fns, times):
            if f is None:
                continue
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            t.append(time.perf_counter() - t0)
    return [1000 * statistics.median(t) if t else None for t in times]


def fmt(v, width=10, digits=2):
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.{digits}f}"


# -- the torch twins of the networks (NCHW) ------------------------------------------------------------------
def torch_nets(torch):
    nn = torch.nn

    class Seq(nn.Module):
        """Recurrent layers over the time axis W of an NCHW map: step t reads x[:, :, :, t] flattened (C, H)."""

        def __init__(self, convs, rnns, head):
            super().__init__()
            self.convs, self.rnns, self.head = convs, nn.ModuleList(rnns), head

        def forward(self, x):
            x = self.convs(x)
            n, c, h, w = x.shape
            s = x.permute(3, 0, 1, 2).reshape(w, n, c * h)
            for r in self.rnns:
                s, _ = r(s)
            return self.head(s[-1])

    def upcall():
        return nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(32, 2))

    def whale_small():
        convs = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=(1, 2)), nn.ReLU(),
            nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(32, 32, 2), nn.BatchNorm2d(32), nn.ReLU())
        rnns = [nn.GRU(32 * 38, 32, bidirectional=True), nn.GRU(64, 32)]
        head = nn.Sequential(nn.Linear(32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
        return Seq(convs, rnns, head)

    def whale():
        convs = nn.Sequential(
            nn.Conv2d(1, 128, 3, stride=(1, 2)), nn.ReLU(),
            nn.Conv2d(128, 256, 3), nn.BatchNorm2d(256), nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(256, 512, 2), nn.BatchNorm2d(512), nn.ReLU())
        rnns = [nn.RNN(512 * 38, 256, nonlinearity="relu", bidirectional=True),
                nn.RNN(512, 256, nonlinearity="relu", bidirectional=True),
                nn.RNN(512, 256, nonlinearity="relu", bidirectional=True)]
        head = nn.Sequential(nn.Linear(512, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 2))
        return Seq(convs, rnns, head)

    return {"upcall": upcall, "whale-birnn-small": whale_small, "whale-birnn": whale}


def torch_train_step(torch, name, model, x, y):
    """One training step as the params files say: adam (upcall) or rmsprop with clipNorm on the recurrent
    layers (whale), L2 decay on the weights."""
    if name == "upcall":
        opt = torch.optim.Adam(model.parameters(), lr=0.005, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)
        clip_groups = []
    else:
        wd = 1e-5 if name == "whale-birnn-small" else 0.0
        lr = 1e-3 if name == "whale-birnn-small" else 1e-4
        opt = torch.optim.RMSprop(model.parameters(), lr=lr, alpha=0.99, eps=1e-8, weight_decay=wd)
        norm = 5.0 if name == "whale-birnn-small" else 10.0
        clip_groups = [(list(r.parameters()), norm) for r in model.rnns]
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        for params, norm in clip_groups:
            torch.nn.utils.clip_grad_norm_(params, norm)
        opt.step()
        return loss.item()

    return step


def bench_network_net(name):
    """(layer def text, params text, input (C, H, W), classes, torch model maker(torch)) of one of
    bench_network.py's networks."""
    import bench_network

    layer_def, params, shape, classes, _ = bench_network.networks(None)[BENCH_NETWORK[name]]
    makers = {"upcall64": bench_network.torch_upcall, "cifar18": lambda t: bench_network.torch_cifar18(t, False),
              "keywords": bench_network.torch_keywords}
    return layer_def, params, shape, classes, makers[name]


def net_shape(name):
    """(input (C, H, W), classes) of a network of either table."""
    if name in NETS:
        return NETS[name][2], 2
    _, _, shape, classes, _ = bench_network_net(name)
    return shape, classes


def torch_sgd_step(torch, model, x, y):
    """bench_network.py's torch step (SGD, momentum 0.9, decay on the weights) on CUDA tensors, the loss read
    back as our trainer reads its cost."""
    import bench_network

    return bench_network.torch_sgd_step(torch, model, x, y, read_back=True)


def our_train_step(np, cupy, backend, name, batch):
    from convnet_cli.demo import config_path
    from convnet_cli.net import Net

    if name in NETS:
        layer_def, params, shape = NETS[name]
        net = Net.from_files(config_path(layer_def), config_path(params), shape, backend=backend, seed=0)
    else:
        layer_def, params, shape, _, _ = bench_network_net(name)
        net = Net.from_text(layer_def, params, shape, backend=backend, seed=0)
    c, h, w = shape
    classes = net_shape(name)[1]
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal((batch, h, w, c)).astype(np.float32))
    y = cupy.asarray(rng.integers(0, classes, batch).astype(np.int32))
    count = [0]

    def step():
        rng_dev = backend.rng(count[0])
        costs = net.forward({0: x, 1: y}, train=True, rng=rng_dev)  # reads the cost back (one sync)
        net.update(net.backward(), progress=count[0] / 1000, epoch=0.0)
        count[0] += 1
        return costs

    return step, net


# -- single layers -----------------------------------------------------------------------------------------
def torch_layer(torch, layer):
    """(module or callable, takes NCHW input) equal to our layer, or None when there is no twin."""
    nn = torch.nn
    t = layer.type
    c, h, w = layer.in_shapes[0]
    p = layer.props
    if t == "conv":
        return nn.Conv2d(c, p.filters, p.filterSize, stride=p.stride, padding=p.padding, groups=p.groups)
    if t == "pool":
        if p.sizeX == "all":
            return nn.AdaptiveMaxPool2d(1) if p.pool == "max" else nn.AdaptiveAvgPool2d(1)
        cls = nn.MaxPool2d if p.pool == "max" else nn.AvgPool2d
        kw = {} if p.pool == "max" else {"count_include_pad": False}
        stride = p.stride if p.stride is not None else p.sizeX
        return cls(p.sizeX, stride, ceil_mode=True, **kw)
    if t == "batchnorm":
        return nn.BatchNorm2d(c) if (h, w) != (1, 1) else nn.Sequential(nn.Flatten(), nn.BatchNorm1d(c))
    if t == "fc":
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, p.outputs))
    if t in ("rnn", "gru", "lstm"):
        cls = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[t]
        kw = {"nonlinearity": layer.props.neuron} if t == "rnn" else {}
        rnn = cls(c * h, p.outputs, bidirectional=bool(p.bidirectional), **kw)

        class Over(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = rnn

            def forward(self, x):
                n, cc, hh, ww = x.shape
                return self.rnn(x.permute(3, 0, 1, 2).reshape(ww, n, cc * hh))[0]
        return Over()
    if t == "seqpool" and p.pool == "last":
        return lambda x: x[:, :, :, -1:]
    if t == "softmax":
        return lambda x: torch.softmax(x, dim=1)
    if t == "cmrnorm":
        return nn.LocalResponseNorm(p.size, alpha=layer.hyper.scale, beta=layer.hyper.pow, k=layer.hyper.minDiv)
    return None


def layer_rows(np, cupy, torch, net, name, batch, args, sync, seen):
    """Time each layer of `net` (ours on CuPy, the torch twin on CUDA) at its shape in the network."""
    rows = []
    rng = np.random.default_rng(1)
    data_fed = {l.name for l in net.layers if l.in_names and all(net.by_name[i].type == "data" for i in l.in_names)}
    for layer in net.layers:
        if layer.type == "data":
            continue
        key = (layer.type, tuple(layer.in_shapes), repr(sorted(vars(layer.props).items())))
        if key in seen:
            continue
        seen.add(key)
        label = f"{name}/{layer.name} {layer.type} {'x'.join(map(str, layer.in_shapes[0]))}"
        try:
            rows.append((label, *time_layer(np, cupy, torch, net, layer, layer.name in data_fed, batch, args,
                                            sync, rng)))
        except Exception as exc:  # one broken row must not hide the others
            rows.append((label, None, None, f"error: {type(exc).__name__}: {exc}"))
    return rows


def time_layer(np, cupy, torch, net, layer, data_fed, batch, args, sync, rng):
    from convnet_cli.layers.base import Context

    c, h, w = layer.in_shapes[0]
    co, ho, wo = layer.out_shape
    ctx = Context(xp=cupy, train=True, rng=net.backend.rng(0))
    if layer.is_cost:  # cost.logreg on a softmax: the fused softmax + log-loss, as the net runs it
        k = layer.in_shapes[1][0]
        z = cupy.asarray(rng.standard_normal((batch, 1, 1, k)).astype(np.float32))
        y = cupy.asarray(rng.integers(0, k, batch).astype(np.int32))

        def ours():
            _, cache = layer.forward_fused(y, z, ctx)
            layer.backward_fused(1.0, cache, ctx)

        theirs = None
        if torch is not None:
            tz = torch.randn(batch, k, device="cuda", requires_grad=True)
            ty = torch.randint(0, k, (batch,), device="cuda")
            loss_fn = torch.nn.CrossEntropyLoss()

            def theirs():
                loss = loss_fn(tz, ty)
                loss.backward()
                loss.item()
        ms_ours, ms_torch = timed_medians([ours, theirs], args.warmup, args.steps, sync)
        return ms_ours, ms_torch, "softmax + log-loss, cost read back"

    params = {k: cupy.asarray(v) for k, v in net.params[layer.name].items()}
    x = cupy.asarray(rng.standard_normal((batch, h, w, c)).astype(np.float32))
    dout = cupy.asarray(rng.standard_normal((batch, ho, wo, co)).astype(np.float32))
    if hasattr(layer, "input_grads"):
        layer.input_grads = not data_fed

    def ours():
        out, cache = layer.forward([x], params, ctx)
        layer.backward(dout, cache, params, ctx)

    module = torch_layer(torch, layer) if torch is not None else None
    theirs = None
    note = "" if not data_fed else "no input gradient"
    if module is not None:
        if isinstance(module, torch.nn.Module):
            module = module.cuda().train()
        tx = torch.randn(batch, c, h, w, device="cuda", requires_grad=not data_fed)
        with torch.no_grad():
            ty = module(tx)
        tdy = torch.randn_like(ty)

        def theirs():
            y = module(tx)
            y.backward(tdy)
    elif torch is not None:
        note = "no torch twin"
    ms_ours, ms_torch = timed_medians([ours, theirs], args.warmup, args.steps, sync)
    return ms_ours, ms_torch, note


def main(argv=None):
    args = parse_args(argv)
    if args.tf32:
        os.environ["CUPY_TF32"] = "1"  # read when CuPy is imported
    cupy, reason = gpu_or_reason()
    if cupy is None:
        print(f"bench_gpu: no GPU to run on: {reason}. Nothing was measured.")
        return 0
    import numpy as np

    try:
        import torch
    except Exception as exc:
        torch = None
        print(f"bench_gpu: PyTorch does not load ({exc}); timing convnet only")
    if torch is not None and not torch.cuda.is_available():
        print("bench_gpu: PyTorch has no CUDA here; timing convnet only")
        torch = None

    from convnet_cli.backend import get_backend

    backend = get_backend("gpu")
    dev = cupy.cuda.Device()

    def sync():
        dev.synchronize()
        if torch is not None:
            torch.cuda.synchronize()

    try:
        gpu_name = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"]
        gpu_name = gpu_name.decode() if isinstance(gpu_name, bytes) else str(gpu_name)
    except Exception:
        gpu_name = f"GPU {dev.id}"
    print(f"{gpu_name}; cupy {cupy.__version__}" + (f", torch {torch.__version__} (cuDNN "
          f"{torch.backends.cudnn.version()})" if torch is not None else "") +
          f"; batch {args.batch}, float32, TF32 {'on' if args.tf32 else 'off'}; median of {args.steps} steps")
    if torch is not None:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.manual_seed(0)
        twins = torch_nets(torch)

    names = [n.strip() for n in args.nets.split(",") if n.strip()]
    known = list(NETS) + list(BENCH_NETWORK)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--nets: unknown network(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    layer_nets = {n.strip() for n in args.layer_nets.split(",") if n.strip()}

    steps, layer_table, seen = [], [], set()
    for name in names:
        try:
            ours, net = our_train_step(np, cupy, backend, name, args.batch)
        except Exception as exc:
            steps.append((name, None, None, f"error: {type(exc).__name__}: {exc}"))
            continue
        theirs, note = None, ""
        if torch is not None:
            try:
                (c, h, w), classes = net_shape(name)
                tx = torch.randn(args.batch, c, h, w, device="cuda")
                ty = torch.randint(0, classes, (args.batch,), device="cuda")
                if name in NETS:
                    model = twins[name]().cuda().train()
                    theirs = torch_train_step(torch, name, model, tx, ty)
                else:
                    model = bench_network_net(name)[4](torch).cuda().train()
                    theirs = torch_sgd_step(torch, model, tx, ty)
            except Exception as exc:
                note = f"torch error: {type(exc).__name__}: {exc}"
        try:
            ms = timed_medians([ours, theirs], args.warmup, args.steps, sync)
            steps.append((name, ms[0], ms[1], note))
        except Exception as exc:
            steps.append((name, None, None, f"error: {type(exc).__name__}: {exc}"))
        if not args.no_layers and name in layer_nets:
            layer_table += layer_rows(np, cupy, torch, net, name, args.batch, args, sync, seen)
        del net, ours, theirs
        cupy.get_default_memory_pool().free_all_blocks()
        if torch is not None:
            torch.cuda.empty_cache()

    def table(title, rows, width):
        print()
        print(title)
        header = f"{'':<{width}}{'convnet ms':>12}{'torch ms':>10}{'ratio':>8}  notes"
        print(header)
        print("-" * len(header))
        for label, a, b, note in rows:
            ratio = a / b if a is not None and b else None
            print(f"{label:<{width}}{fmt(a, 12)}{fmt(b, 10)}{fmt(ratio, 8)}  {note}")

    if layer_table:
        table("forward + backward of each layer", layer_table, max(len(r[0]) for r in layer_table) + 2)
    table("one training step (forward, backward, update)", steps, max(len(r[0]) for r in steps) + 2)
    worst = max((a / b for _, a, b, _ in steps if a is not None and b), default=None)
    if worst is not None:
        print(f"\nslowest whole-step ratio {worst:.2f} (target: within 2x of PyTorch) -> "
              f"{'met' if worst <= 2 else 'NOT met'}")
    if not args.no_features:
        features_table(np, cupy, torch, args, sync)
    for name in [n.strip() for n in args.profile.split(",") if n.strip()]:
        profile_steps(np, cupy, backend, name, args.batch, sync)
    return 0


def profile_steps(np, cupy, backend, name, batch, sync, steps=20):
    """cProfile over `steps` of our training steps of network `name`: the functions the host spends its time
    in (a step that waits for the GPU shows the wait where the cost is read back)."""
    import cProfile
    import pstats

    step, _ = our_train_step(np, cupy, backend, name, batch)
    for _ in range(3):
        step()
    sync()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(steps):
        step()
    sync()
    prof.disable()
    print(f"\nprofile of {steps} training steps of {name}: {1000 * (time.perf_counter() - t0) / steps:.2f} ms a step")
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


FEATURE_SPECS = {  # name -> feature settings (keywords-features.yaml, and PCEN on the same frames)
    "logmel 16 kHz 1 s (keywords)": dict(sample_rate=16000, duration=1.0, kind="logmel", n_fft=400, hop=160,
                                          n_mels=40, fmin=20, fmax=7600),
    "pcen 16 kHz 1 s": dict(sample_rate=16000, duration=1.0, kind="pcen", n_fft=400, hop=160, n_mels=40,
                            fmin=20, fmax=7600),
}


def features_table(np, cupy, torch, args, sync):
    """compute_features over --clips clips, in chunks of 256: convnet on the GPU (signals copied in and
    features copied out, as make-batches would), convnet on the CPU (this process, NumPy), torchaudio's
    MelSpectrogram + log on the GPU where it is installed (logmel only; its mel filters are its own, so its
    numbers are for speed, not values)."""
    from convnet_cli.ingest.features import FeatureSpec, compute_features

    try:
        import torchaudio
    except Exception:
        torchaudio = None
    print()
    print(f"features of {args.clips} clips (make-batches' and detect's front end), clips/s and x real time")
    header = f"{'':<32}{'GPU clips/s':>13}{'x real time':>13}{'CPU clips/s':>13}{'GPU/CPU':>9}{'torchaudio':>12}"
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    chunk = 256
    for label, d in FEATURE_SPECS.items():
        spec = FeatureSpec.from_dict(d, "bench")
        sig = rng.standard_normal((chunk, spec.num_samples)).astype(np.float32)
        rounds = max(1, args.clips // chunk)

        def gpu():
            for _ in range(rounds):
                cupy.asnumpy(compute_features(cupy.asarray(sig), spec, cupy))

        def cpu():
            compute_features(sig, spec, np)  # one chunk (the CPU is slow): scaled to --clips below

        ta = None
        if torch is not None and torchaudio is not None and spec.kind == "logmel":
            mel = torchaudio.transforms.MelSpectrogram(sample_rate=spec.sample_rate, n_fft=spec.n_fft,
                                                       hop_length=spec.hop, n_mels=spec.n_mels, f_min=20,
                                                       f_max=7600, power=2.0).cuda()

            def ta():
                for _ in range(rounds):
                    torch.log(mel(torch.from_numpy(sig).cuda()) + 1e-10).cpu().numpy()
        try:
            g, c, t = timed_medians([gpu, cpu, ta], 1, 3, sync)
        except Exception as exc:  # one broken row must not hide the others
            print(f"{label:<32}error: {type(exc).__name__}: {exc}")
            continue
        clips = rounds * chunk
        gps, cps = clips / (g / 1000), chunk / (c / 1000)
        tps = clips / (t / 1000) if t else None
        print(f"{label:<32}{gps:>13,.0f}{gps * spec.duration:>13,.0f}{cps:>13,.0f}{gps / cps:>9.1f}"
              f"{fmt(tps, 12, 0)}")


if __name__ == "__main__":
    sys.exit(main())
