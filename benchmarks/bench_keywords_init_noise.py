"""Held-out accuracy of the keywords starter net (convnet_cli/layer_configs/keywords.yaml) by `init`, with and
without make-batches --noise-dir, at the same number of epochs (docs/DESIGN.md: 'Which init the starter configs use').

    python benchmarks/bench_keywords_init_noise.py ../shared/audio/keywords WORKDIR [--epochs 8] [--inits ...]

KEYWORDS holds train/<word>/*.flac and test/<word>/*.flac. Batches are made from train/ (its last fifth is the
validation range that picks best.npz); the accuracy is `predict -f RUN test/ --report` on the held-out test/
clips. The noise for --noise-dir is synthesised here (white, pink, brown, hum and burst noise, 10 s each),
so the measurement needs no other data. Every run uses the same --seed; each prints its held-out accuracy and validation errors.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "convnet_cli", "layer_configs")


def cli(*args, log=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "convnet_cli", *args], env=env, capture_output=True, text=True)
    if log:
        with open(log, "w") as f:
            f.write(out.stdout + out.stderr)
    if out.returncode:
        raise SystemExit(f"convnet {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return out.stdout + out.stderr


def synth_noise(folder, sr=16000, seconds=10.0, seed=0):
    import soundfile as sf

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    white = rng.standard_normal(n)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / sr), 1.0)
    pink = np.fft.irfft(spec / np.sqrt(f), n)
    brown = np.fft.irfft(spec / f, n)
    t = np.arange(n) / sr
    hum = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 8)) + 0.1 * white
    bursts = white * (rng.random(n // 1600).repeat(1600)[:n] > 0.7)
    for name, x in (("white", white), ("pink", pink), ("brown", brown), ("hum", hum), ("bursts", bursts)):
        x = 0.3 * x / np.max(np.abs(x))
        sf.write(os.path.join(folder, f"{name}.wav"), x.astype(np.float32), sr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("keywords")
    ap.add_argument("work")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--mini", type=int, default=64)
    ap.add_argument("--inits", default="kaiming_normal,pytorch,kaiming_uniform")
    ap.add_argument("--data", default="clean,noisy")
    ap.add_argument("--seed", type=int, default=0, help="train --seed (initial weights, order, dropout)")
    args = ap.parse_args()
    w = args.work
    os.makedirs(w, exist_ok=True)
    feats = os.path.join(CONFIGS, "keywords-features.yaml")
    base = ["--features", feats, "--batch-size", "320", "--test-fraction", "0.2", "--jobs", "2", "--quiet"]
    sets = {}
    for kind in args.data.split(","):
        d = os.path.join(w, f"batches-{kind}")
        if not os.path.exists(os.path.join(d, "batches.meta")):
            extra = []
            if kind == "noisy":
                synth_noise(os.path.join(w, "noise"))
                extra = ["--noise-dir", os.path.join(w, "noise"), "--noise-snr", "0,20", "--copies", "1"]
            print(cli("make-batches", os.path.join(args.keywords, "train"), d, *base, *extra).strip())
        sets[kind] = d
    layers = open(os.path.join(CONFIGS, "keywords.yaml")).read()
    results = {}
    for init in args.inits.split(","):
        cfg = os.path.join(w, f"keywords-{init}.yaml")
        with open(cfg, "w") as f:
            f.write(re.sub(r"init: \w+", f"init: {init}", layers))
        for kind, d in sets.items():
            save = os.path.join(w, f"runs-{init}-{kind}-seed{args.seed}")
            out = cli("train", "--data-path", d, "--save-path", save, "--layer-def", cfg, "--layer-params",
                      os.path.join(CONFIGS, "keywords-params.yaml"), "--epochs", str(args.epochs), "--mini",
                      str(args.mini), "--seed", str(args.seed), log=os.path.join(w, f"train-{init}-{kind}-seed{args.seed}.log"))
            tests = [ln for ln in out.splitlines() if re.match(r"^\d+\.\d+ ", ln)]
            run = sorted(os.path.join(save, r) for r in os.listdir(save))[-1]
            report_out = os.path.join(w, f"preds-{init}-{kind}-seed{args.seed}.csv")
            cli("predict", "-f", run, os.path.join(args.keywords, "test"), "--out", report_out, "--report", "--quiet")
            report = json.load(open(os.path.join(os.path.dirname(report_out), "report.json")))
            val_err = [float(re.search(r"test cost [\d.]+ err ([\d.]+)", t).group(1)) for t in tests]
            results[(init, kind)] = (report["accuracy"], val_err)
            print(f"{init:16s} {kind:6s} seed {args.seed} held-out accuracy {report['accuracy']:.4f}  validation error by epoch "
                  + " ".join(f"{e:.3f}" for e in val_err), flush=True)
    print("\n| init | data | held-out accuracy | validation error after each epoch |\n|---|---|---|---|")
    for (init, kind), (acc, errs) in results.items():
        print(f"| {init} | {kind} | {acc:.3f} | {' '.join(f'{e:.2f}' for e in errs)} |")


if __name__ == "__main__":
    main()
