"""convnet detect on long recordings: speed against real time, the net against PyTorch, and peak memory.

    python benchmarks/bench_detect.py [--hours 6] [--threads 2] [--rss-hours 1,24] [--rss-hop S] [--no-rss]
                                      [--batch 128] [--torch-windows N] [--device cpu|gpu]

1. A --hours long 2 kHz FLAC (coloured noise with an upcall every ~30 s) is synthesised in blocks into a temp
   folder, and a checkpoint of the packaged upcall net (layer_configs/upcall.yaml, upcall-features.yaml: 2-s
   windows of 40 x 75 log-mel, window_hop 1 s) is made with freshly initialised weights and the data mean/std
   of the recording's first windows (speed does not depend on what the net learned).
2. `detect()` runs over it end to end (decode, resample, features, normalise, net, events, tables) and the
   rate is reported as a multiple of real time.
3. The same windows, streamed again, go through our net and through the same net in PyTorch (built from
   the checkpoint's arrays, which are in PyTorch's layout), batch by batch, the two taking turns; the
   forward times are summed and the probabilities compared.
4. Peak RSS of a `convnet detect` process over a 1-hour and a 24-hour file (noise written in blocks): the
   child's VmHWM.
Threads: BLAS/OpenMP for NumPy and torch.set_num_threads, both --threads. --device gpu: detect runs with
`--device gpu` (features computed on the device), and the side-by-side forward passes run on the GPU, ours on
CuPy and PyTorch's on CUDA (cuDNN), each taking the host windows and giving host probabilities.
"""
from __future__ import annotations

import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blas_threads import THREADS as _THREADS  # noqa: E402  (first: before numpy)

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SR = 2000
BLOCK_S = 600


def write_recording(path: str, hours: float, calls: bool = True, seed: int = 0) -> str:
    """A long FLAC written BLOCK_S seconds at a time: coloured noise (+ an upcall every ~30 s)."""
    import numpy as np
    import soundfile as sf
    from scipy.signal import lfilter

    from convnet_cli.demo import sweep

    rng = np.random.default_rng(seed)
    total = int(hours * 3600 * SR)
    zi = np.zeros(1)
    with sf.SoundFile(path, "w", samplerate=SR, channels=1, subtype="PCM_16", format="FLAC") as f:
        done = 0
        while done < total:
            n = min(BLOCK_S * SR, total - done)
            red, zi = lfilter([1.0], [1.0, -0.9], rng.standard_normal(n), zi=zi)
            x = 0.05 * (0.6 * red / 2.3 + 0.4 * rng.standard_normal(n))
            if calls:
                for t in np.arange(rng.uniform(5, 30), n / SR - 2, 30.0):
                    i = int(t * SR)
                    x[i:i + 2000] += sweep(rng, 2000, 55, 230, 0.8, 0.1, 0.08, 1.5)
            f.write(np.clip(x, -1, 1).astype(np.float32))
            done += n
    return path


def make_checkpoint(path: str, recording: str, features: dict | None = None) -> str:
    """The packaged upcall net, freshly initialised, with the mean/std of the first 200 windows; features: the
    feature settings (default: upcall-features.yaml)."""
    import numpy as np
    import yaml

    from convnet_cli.backend import get_backend
    from convnet_cli.demo import config_path
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.windows import iter_window_features
    from convnet_cli.net import Net
    from convnet_cli.train.checkpoint import save_checkpoint

    with open(config_path("upcall.yaml"), encoding="utf-8") as f:
        layer_def = f.read()
    with open(config_path("upcall-params.yaml"), encoding="utf-8") as f:
        params = f.read()
    with open(config_path("upcall-features.yaml"), encoding="utf-8") as f:
        feats = features or yaml.safe_load(f)
    spec = FeatureSpec.from_dict(feats)
    first = np.concatenate([f for _, (_, f) in zip(range(4), iter_window_features(recording, spec, 1.0, batch=50))])
    first = first.reshape(len(first), -1)
    net = Net.from_text(layer_def, params, spec.shape, get_backend("cpu"), 0, "upcall.yaml", "upcall-params.yaml")
    state = {"epoch": 1, "batchnum": 1, "options": {}, "layer_def": layer_def, "layer_params": params,
             "layer_def_name": "upcall.yaml", "layer_params_name": "upcall-params.yaml",
             "label_names": ["noise", "upcall"], "data_shape": list(spec.shape),
             "data_mean": [float(v) for v in first.mean(axis=0)],
             "data_std": [float(v) for v in first.std(axis=0)],
             "features": dict(spec.to_dict(), window_hop=1.0), "history": [], "best": None}
    return save_checkpoint(path, net.get_arrays(), state)


def torch_upcall(torch, arrays):
    """upcall.yaml in torch.nn (NCHW), eval mode, weights from the checkpoint. cuda-convnet's pools round
    their output size up: ceil_mode=True gives the same map sizes."""
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 2), nn.Softmax(dim=1))
    names = {0: "conv1", 1: "bn1", 4: "conv2", 5: "bn2", 8: "conv3", 12: "fc2"}
    with torch.no_grad():
        for i, name in names.items():
            m = model[i]
            if name.startswith("bn"):
                m.weight.copy_(torch.tensor(arrays[f"{name}/gamma"]))
                m.bias.copy_(torch.tensor(arrays[f"{name}/beta"]))
                m.running_mean.copy_(torch.tensor(arrays[f"{name}/running_mean"]))
                m.running_var.copy_(torch.tensor(arrays[f"{name}/running_var"]))
            else:
                m.weight.copy_(torch.tensor(arrays[f"{name}/weights"]).reshape(m.weight.shape))
                m.bias.copy_(torch.tensor(arrays[f"{name}/biases"]))
    return model.eval()


def side_by_side(ckpt_path: str, recording: str, batch: int, max_windows: int | None, device: str = "cpu"):
    """Our forward pass and PyTorch's on the same normalised windows, taking turns per batch; on the GPU
    both take host windows and give host probabilities (the copies are in both times)."""
    import numpy as np
    import torch

    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.windows import iter_window_features
    from convnet_cli.predict.predict import Runner, load_model

    torch.set_num_threads(_THREADS)
    net, ckpt = load_model(ckpt_path, device)
    cuda = device.startswith("gpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    feats = dict(ckpt.state["features"])
    hop = feats.pop("window_hop")
    spec = FeatureSpec.from_dict(feats)
    run = Runner(net, ckpt, net.output_layer(), batch, 1)
    model = torch_upcall(torch, ckpt.arrays)
    if cuda:
        model = model.cuda()
    t_ours = t_torch = t_feat = 0.0
    worst, n = 0.0, 0
    t0 = time.perf_counter()
    block_s = min(max(60.0, batch * hop + spec.duration), 900.0)  # as detect reads
    for _, x in iter_window_features(recording, spec, hop, batch=batch, block_s=block_s):
        t1 = time.perf_counter()
        t_feat += t1 - t0
        p = run(x)
        t2 = time.perf_counter()
        xt = torch.from_numpy(np.ascontiguousarray((x - run.mean) / run.std, dtype=np.float32))
        t3 = time.perf_counter()  # PyTorch's time leaves the normalisation out (ours has it)
        with torch.inference_mode():
            q = model(xt.cuda() if cuda else xt).cpu().numpy()
        t4 = time.perf_counter()
        t_ours += t2 - t1
        t_torch += t4 - t3
        worst = max(worst, float(np.abs(p - q).max()))
        n += len(x)
        t0 = time.perf_counter()
        if max_windows and n >= max_windows:
            break
    return n, t_feat, t_ours, t_torch, worst


def peak_rss_mb(ckpt_path: str, recording: str, out_dir: str, batch: int, hop: float | None):
    from child_rss import convnet_peak_mb   # benchmarks/: the child's own VmHWM

    return convnet_peak_mb(["detect", "-f", ckpt_path, recording, "--out", out_dir, "--quiet", "--overwrite",
                            "--batch", str(batch)] + (["--hop", str(hop)] if hop else []), "detect")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128, help="windows per forward pass (detect's default)")
    ap.add_argument("--rss-hours", default="1,24")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--rss-hop", type=float, default=0.0,
                    help="hop of the memory runs (0: the checkpoint's, 1 s; a longer one keeps the 24-h run short, "
                         "the whole file is decoded either way)")
    ap.add_argument("--torch-windows", type=int, default=0, help="compare at most this many windows (0: all)")
    ap.add_argument("--device", default="cpu", help="cpu or gpu: where detect and the forward passes run")
    ap.add_argument("--dir", help="work folder (default: a temp folder, removed at the end)")
    args = ap.parse_args(argv)

    import shutil

    import numpy as np

    from convnet_cli.detect.detect import detect

    work = args.dir or tempfile.mkdtemp(prefix="bench_detect_")
    os.makedirs(work, exist_ok=True)
    try:
        print(f"bench_detect: device {args.device}, {args.threads} thread(s), numpy {np.__version__}, batch {args.batch}, work in {work}")
        rec = os.path.join(work, f"long_{args.hours:g}h.flac")
        t = time.perf_counter()
        if not os.path.exists(rec):
            write_recording(rec, args.hours)
        print(f"  synthesised {args.hours:g} h at {SR} Hz: {os.path.getsize(rec) / 2**20:.0f} MiB FLAC "
              f"({time.perf_counter() - t:.0f} s, not counted)")
        ck = make_checkpoint(os.path.join(work, "upcall.npz"), rec)

        s = detect(ck, [rec], os.path.join(work, "out"), overwrite=True, batch=args.batch, progress=False,
                   device=args.device)
        print(f"  detect end to end: {s.audio_s / 3600:.2f} h of audio in {s.seconds:.1f} s = "
              f"{s.realtime:,.0f}x real time ({s.detections} detections)")

        import torch

        n, t_feat, t_ours, t_torch, worst = side_by_side(ck, rec, args.batch, args.torch_windows or None,
                                                         args.device)
        audio = n * 1.0  # window_hop 1 s: one window per second of audio
        print(f"  {n} windows (2 s every 1 s), torch {torch.__version__}:")
        print(f"    decode+resample+features   {t_feat:7.1f} s  {audio / t_feat:8,.0f}x real time")
        print(f"    net forward, convnet       {t_ours:7.1f} s  {audio / t_ours:8,.0f}x real time")
        print(f"    net forward, PyTorch       {t_torch:7.1f} s  {audio / t_torch:8,.0f}x real time")
        print(f"    ratio convnet / PyTorch    {t_ours / t_torch:7.2f}      max |p - p_torch| {worst:.2e}")
        print(f"    features + convnet net     {t_feat + t_ours:7.1f} s  {audio / (t_feat + t_ours):8,.0f}x real time")
        if not args.no_rss:
            for h in [float(v) for v in args.rss_hours.split(",") if v]:
                path = os.path.join(work, f"noise_{h:g}h.flac")
                if not os.path.exists(path):
                    write_recording(path, h, calls=False, seed=1)
                mb, sec = peak_rss_mb(ck, path, os.path.join(work, f"out_{h:g}h"), args.batch, args.rss_hop or None)
                print(f"  peak RSS, convnet detect over {h:g} h (hop {args.rss_hop or 1.0:g} s): {mb:.0f} MB "
                      f"({sec:.0f} s, {h * 3600 / sec:,.0f}x real time incl. start-up)")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
