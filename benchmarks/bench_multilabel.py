"""Multi-label training (SPEC 17) measured in one run (docs/MULTILABEL.md):

    python benchmarks/bench_multilabel.py [--epochs 15] [--hours 6] [--small] [--skip-chorus] [--skip-ingest]
                                          [--keep DIR] [--json FILE]

1. On the chorus demo set (convnet_cli/demo_chorus.py: 8 x 90 s to train on, 3 x 90 s held out, four call types
   that often overlap), with the same starter net (layer_configs/chorus.yaml) three ways:
   - multi-label: make-batches --multi-label, cost.bce on logistic outputs (what `convnet demo --chorus` runs);
   - single-label: the same convolutions with a softmax and cost.logreg, trained on single-label windows (the
     largest overlap wins, a background class);
   - PyTorch: the same net (same initial weights, same minibatches from the same multi-label batch files, Adam
     with the same learning-rate schedule and weight decay, BCEWithLogitsLoss with the unknown entries masked),
     its best test mAP weights copied into a convnet checkpoint so that detect and evaluate are the same code.
   Each is run through `detect` on the held-out recordings and `evaluate`d per class: event-level AP and
   recall, and the overlapping pairs of calls both found. PyTorch is needed for the third column only.
2. make-batches --annotations on one synthetic recording of `--hours` (6) hours at 8 kHz (a 20 s chorus at
   the start of every minute, the rest noise; WAV written in 60 s blocks), single-label against
   --multi-label, each in a fresh subprocess (--jobs 1, --dtype uint8, --background-ratio 1, --test-fraction 0
   as the recording is one), three times each (--repeats), alternating: the fastest wall seconds (all are
   printed), x real time, and the larger peak RSS (getrusage of the subprocess and of its own children, measured the same way for both).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


# -- 1. the chorus set ----------------------------------------------------------------------------------------------
def evaluate_run(run_dir, held_rec, held_ann, out):
    from convnet_cli.demo_chorus import CALL_TYPES, pairs_found
    from convnet_cli.detect.detect import detect
    from convnet_cli.detect.evaluate import evaluate, load_pair

    detect(run_dir, [held_rec], out, overwrite=True, progress=False)
    dets, anns, classes, notes = load_pair(out, held_ann)
    ev = evaluate(dets, anns, list(CALL_TYPES), 0.5, 0.9, notes).result
    found, total = pairs_found(anns, dets)
    return {"classes": {c: {k: ev["classes"].get(c, {}).get(k) for k in ("average_precision", "recall", "precision")}
                        for c in CALL_TYPES},
            "overall": {k: ev["overall"][k] for k in ("average_precision", "recall", "precision")},
            "pairs_found": found, "pairs": total}


def torch_twin(torch, arrays):
    """chorus.yaml in PyTorch (NCHW), initial weights from convnet's `arrays`."""
    nn = torch.nn

    class Chorus(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 8, 5, padding=2), nn.BatchNorm2d(8, eps=1e-5, momentum=0.1)
            self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16, eps=1e-5, momentum=0.1)
            self.conv3 = nn.Conv2d(16, 24, 3, padding=1)
            self.fc = nn.Linear(288, 4)

        def forward(self, x):
            F = torch.nn.functional
            h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, ceil_mode=True)
            h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 3, 2, ceil_mode=True)
            h = F.relu(self.conv3(h))
            h = F.max_pool2d(h, (1, h.shape[-1]))
            return self.fc(h.flatten(1))   # logits; (C, H, W) flattening, as convnet's fc

    m = Chorus()
    with torch.no_grad():
        for name, mod in (("conv1", m.conv1), ("conv2", m.conv2), ("conv3", m.conv3), ("fc", m.fc)):
            mod.weight.copy_(torch.tensor(arrays[f"{name}/weights"]))
            mod.bias.copy_(torch.tensor(arrays[f"{name}/biases"]))
        for name, mod in (("bn1", m.bn1), ("bn2", m.bn2)):
            mod.weight.copy_(torch.tensor(arrays[f"{name}/gamma"]))
            mod.bias.copy_(torch.tensor(arrays[f"{name}/beta"]))
    return m


def to_arrays(m, like):
    """convnet arrays of `like` (a checkpoint's) with the weights of the PyTorch twin `m`."""
    import numpy as np

    out = dict(like)
    for name, mod in (("conv1", m.conv1), ("conv2", m.conv2), ("conv3", m.conv3), ("fc", m.fc)):
        out[f"{name}/weights"] = mod.weight.detach().numpy().astype(np.float32)
        out[f"{name}/biases"] = mod.bias.detach().numpy().astype(np.float32)
    for name, mod in (("bn1", m.bn1), ("bn2", m.bn2)):
        out[f"{name}/gamma"] = mod.weight.detach().numpy().astype(np.float32)
        out[f"{name}/beta"] = mod.bias.detach().numpy().astype(np.float32)
        out[f"{name}/running_mean"] = mod.running_mean.numpy().astype(np.float32)
        out[f"{name}/running_var"] = mod.running_var.numpy().astype(np.float32)
    return out


def train_torch(batches, multi_run, save, epochs, seed=0, mini=32, base_lr=0.004, tgt=10.0, wc=1e-4):
    """The chorus net in PyTorch on convnet's multi-label batch files (the provider's minibatches); returns
    (run directory holding best.npz with its weights, best test mAP, seconds)."""
    import numpy as np
    import torch

    from convnet_cli.backend import CPU
    from convnet_cli.data.batch_files import BatchSet
    from convnet_cli.data.provider import DataProvider
    from convnet_cli.demo import config_path
    from convnet_cli.metrics import mean_average_precision, per_class_average_precision
    from convnet_cli.net import Net
    from convnet_cli.train.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(seed)
    t0 = time.time()
    bs = BatchSet(batches)
    init = Net.from_files(config_path("chorus.yaml"), config_path("chorus-params.yaml"), bs.data_shape, seed=seed)
    m = torch_twin(torch, init.get_arrays())
    weights = [p for n, p in m.named_parameters() if n.endswith("weight") and not n.startswith("bn")]
    others = [p for n, p in m.named_parameters() if not (n.endswith("weight") and not n.startswith("bn"))]
    opt = torch.optim.Adam([{"params": weights, "weight_decay": wc}, {"params": others, "weight_decay": 0.0}],
                           lr=base_lr, betas=(0.9, 0.999), eps=1e-8)
    train = DataProvider(bs, bs.train_range, mini, CPU, seed=seed, train=True)
    test = DataProvider(bs, bs.test_range, mini, CPU, seed=seed, train=False)
    total = len(bs.train_range) * epochs
    done, best, best_state = 0, None, None

    def loss_of(z, y):
        y = torch.tensor(np.asarray(y))
        known = (y >= 0).float()
        return torch.nn.functional.binary_cross_entropy_with_logits(z, y.clamp(min=0), weight=known,
                                                                    reduction="sum") / z.shape[0]

    for epoch in range(1, epochs + 1):
        for _, mbs in train.iter_epoch(epoch):
            for g in opt.param_groups:
                g["lr"] = base_lr * tgt ** (-done / total)
            m.train()
            for mb in mbs:
                x = torch.tensor(np.ascontiguousarray(np.asarray(mb.x).transpose(0, 3, 1, 2)))
                opt.zero_grad()
                loss_of(m(x), mb.labels).backward()
                opt.step()
            done += 1
        m.eval()
        scores, targets, cost, n = [], [], 0.0, 0
        with torch.no_grad():
            for _, mbs in test.iter_epoch(0):
                for mb in mbs:
                    z = m(torch.tensor(np.ascontiguousarray(np.asarray(mb.x).transpose(0, 3, 1, 2))))
                    cost += float(loss_of(z, mb.labels)) * z.shape[0]
                    n += z.shape[0]
                    scores.append(torch.sigmoid(z).numpy())
                    targets.append(np.asarray(mb.labels))
        s, t = np.concatenate(scores), np.concatenate(targets)
        mean_ap = mean_average_precision(per_class_average_precision(s, t > 0.5, t >= 0))
        key = (mean_ap if mean_ap is not None else -1.0, -cost / n)
        if best is None or key > best:
            best, best_state = key, {k: v.clone() for k, v in m.state_dict().items()}
    m.load_state_dict(best_state)
    ckpt = load_checkpoint(os.path.join(multi_run, "best.npz"))
    run_dir = os.path.join(save, "ConvNet__pytorch")
    os.makedirs(run_dir, exist_ok=True)
    save_checkpoint(os.path.join(run_dir, "best.npz"), to_arrays(m, ckpt.arrays), ckpt.state)
    return run_dir, best[0], time.time() - t0


def chorus(root, epochs, sizes):
    from convnet_cli import demo_chorus

    r = demo_chorus.run(os.path.join(root, "chorus"), epochs=epochs, quiet=True, say=lambda s: None, **sizes)
    croot = os.path.join(root, "chorus")
    held_rec, held_ann = (os.path.join(croot, d, "heldout") for d in ("recordings", "annotations"))
    out = {}
    for tag in ("multi", "single"):
        out[tag] = evaluate_run(r[tag]["run"], held_rec, held_ann, r[tag]["detections"])
    try:
        import torch  # noqa: F401
    except ImportError:
        out["pytorch"] = None
        print("PyTorch not installed: no PyTorch column", file=sys.stderr)
    else:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        run_dir, mean_ap, secs = train_torch(os.path.join(croot, "batches-multi"), r["multi"]["run"],
                                             os.path.join(croot, "runs-pytorch"), epochs)
        out["pytorch"] = evaluate_run(run_dir, held_rec, held_ann, os.path.join(croot, "detections-pytorch"))
        out["pytorch"]["test_map"] = mean_ap
        out["pytorch"]["train_seconds"] = round(secs, 1)
    for tag in ("multi", "single"):
        log = [json.loads(line) for line in open(os.path.join(r[tag]["run"], "train_log.jsonl"))]
        tests = [rec for rec in log if rec["type"] == "test"]
        out[tag]["test_map"] = max((t["map"] for t in tests if t.get("map") is not None), default=None)
    out["seconds"] = round(r["seconds"], 1)
    return out


def print_chorus(res):
    from convnet_cli.demo_chorus import CALL_TYPES

    cols = [c for c in ("multi", "single", "pytorch") if res.get(c)]
    names = {"multi": "multi-label", "single": "single-label", "pytorch": "PyTorch BCE"}

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    print("\nheld-out chorus, event level: AP / recall per class")
    print(f"{'':12}" + "".join(f"{names[c]:>18}" for c in cols))
    for k in CALL_TYPES:
        print(f"{k:12}" + "".join(f"{f(res[c]['classes'][k]['average_precision']) + ' / ' + f(res[c]['classes'][k]['recall']):>18}"
                                  for c in cols))
    for key, label in (("average_precision", "overall AP"), ("recall", "recall"), ("precision", "precision")):
        print(f"{label:12}" + "".join(f"{f(res[c]['overall'][key]):>18}" for c in cols))
    print(f"{'pairs found':12}" + "".join(f"{str(res[c]['pairs_found']) + '/' + str(res[c]['pairs']):>18}" for c in cols))
    print(f"{'test mAP':12}" + "".join(f"{f(res[c].get('test_map')):>18}" for c in cols) + "   (windows; single: -)")


# -- 2. make-batches on a long recording ------------------------------------------------------------------------------
def long_recording(folder, hours):
    """folder/rec/long.wav (8 kHz, PCM_16) and folder/tables/long.Table.1.selections.txt; returns (seconds, calls)."""
    import numpy as np
    import soundfile as sf

    from convnet_cli.demo_chorus import SR, make_recording
    from convnet_cli.demo_recordings import raven_table
    from convnet_cli.fileio import write_text_atomic

    rec, tab = os.path.join(folder, "rec"), os.path.join(folder, "tables")
    os.makedirs(rec, exist_ok=True)
    os.makedirs(tab, exist_ok=True)
    rng = np.random.default_rng(0)
    events = []
    minutes = int(round(hours * 60))
    with sf.SoundFile(os.path.join(rec, "long.wav"), "w", samplerate=SR, channels=1, format="WAV",
                      subtype="PCM_16") as f:
        for k in range(minutes):
            block = (0.02 * rng.standard_normal(60 * SR)).astype(np.float32)
            x, ev = make_recording(rng, 20.0)
            block[:x.size] += x
            f.write(np.clip(block, -1, 1))
            events.extend((b + 60 * k, e + 60 * k, lab, lo, hi) for b, e, lab, lo, hi in ev)
    write_text_atomic(os.path.join(tab, "long.Table.1.selections.txt"), raven_table(events, "Species"))
    return minutes * 60.0, len(events)


MEASURE = r"""
import os, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[1:])
_, status, ru = os.wait4(p.pid, 0)
wall = time.perf_counter() - t
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{wall:.3f} {ru.ru_maxrss} {kids.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def make_batches_run(folder, multi, jobs=1):
    from convnet_cli.demo import config_path

    out = os.path.join(folder, "batches-multi" if multi else "batches-single")
    cmd = [sys.executable, "-m", "convnet_cli", "make-batches", os.path.join(folder, "rec"), out, "--annotations",
           os.path.join(folder, "tables"), "--features", config_path("chorus-features.yaml"), "--window-hop", "0.5",
           "--background-ratio", "1", "--dtype", "uint8", "--test-fraction", "0", "--jobs", str(jobs), "--quiet",
           "--overwrite"]
    if multi:
        cmd.append("--multi-label")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, env=env)
    last = r.stdout.strip().splitlines()[-1].split()
    wall, rss, kids, rc = float(last[0]), int(last[1]), int(last[2]), int(last[3])
    if rc:
        raise SystemExit(f"make-batches failed ({rc}): {r.stderr[-2000:]}")
    size = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    with open(os.path.join(out, "batches.meta"), "rb") as f:
        from convnet_cli.data.batch_files import restricted_load

        meta = restricted_load(f)
    cases = int(sum(meta.get("batch_cases") or []))
    return {"seconds": wall, "peak_rss_mb": round(max(rss, kids) / 1024, 1), "main_rss_mb": round(rss / 1024, 1),
            "cases": cases, "bytes": size, "summary": r.stdout.strip().splitlines()[0] if r.stdout else ""}


def ingest(root, hours, repeats=3):
    folder = os.path.join(root, "long")
    t = time.time()
    audio_s, calls = long_recording(folder, hours)
    print(f"\n{hours:g} h recording at 8 kHz ({calls} calls) written in {time.time() - t:.0f} s", file=sys.stderr)
    res = {"audio_s": audio_s, "calls": calls}
    for _ in range(repeats):  # alternating, so that neither has the page cache to itself; the best of each
        for tag, multi in (("single", False), ("multi", True)):
            r = make_batches_run(folder, multi)
            if tag not in res or r["seconds"] < res[tag]["seconds"]:
                res[tag] = dict(r, runs=[r["seconds"]] + res.get(tag, {}).get("runs", []),
                                peak_rss_mb=max(r["peak_rss_mb"], res.get(tag, {}).get("peak_rss_mb", 0)))
            else:
                res[tag]["runs"].append(r["seconds"])
                res[tag]["peak_rss_mb"] = max(res[tag]["peak_rss_mb"], r["peak_rss_mb"])
    for tag in ("single", "multi"):
        res[tag]["x_realtime"] = round(audio_s / res[tag]["seconds"], 1)
    return res


def print_ingest(res):
    print(f"\nmake-batches --annotations on {res['audio_s'] / 3600:g} h at 8 kHz ({res['calls']} calls), --jobs 1")
    print(f"{'':14}{'seconds':>9}{'x real time':>13}{'peak RSS MB':>13}{'cases':>8}{'MB written':>12}")
    for tag in ("single", "multi"):
        r = res[tag]
        print(f"{tag + '-label':14}{r['seconds']:9.1f}{r['x_realtime']:13.1f}{r['peak_rss_mb']:13.1f}{r['cases']:8d}"
              f"{r['bytes'] / 1e6:12.1f}")
    for tag in ("single", "multi"):
        print(f"{tag}-label runs (s): {', '.join(f'{v:.1f}' for v in sorted(res[tag]['runs']))}")
    s, m = res["single"], res["multi"]
    print(f"multi / single: time {m['seconds'] / s['seconds']:.3f}, peak RSS {m['peak_rss_mb'] / s['peak_rss_mb']:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--small", action="store_true", help="a check of the script: 2 + 1 chorus recordings of 40 s")
    ap.add_argument("--skip-chorus", action="store_true")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="make-batches runs of each kind, alternating [3]")
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temporary one, removed)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    root = a.keep or tempfile.mkdtemp(prefix="bench_multilabel_")
    os.makedirs(root, exist_ok=True)
    results = {}
    try:
        if not a.skip_chorus:
            sizes = {"n_train": 2, "n_heldout": 1, "seconds": 40.0} if a.small else {}
            results["chorus"] = chorus(root, a.epochs, sizes)
            print_chorus(results["chorus"])
        if not a.skip_ingest:
            results["ingest"] = ingest(root, a.hours, a.repeats)
            print_ingest(results["ingest"])
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
