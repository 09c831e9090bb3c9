"""`convnet train` against a plain PyTorch training loop over the same minibatches, start-up included.

    python benchmarks/bench_train_cli.py [--threads 2] [--cases 1600] [--epochs 2] [--mini 128] [--repeats 3]

Both sides train layer_configs/keywords.yaml (conv 3x3 + batchnorm + relu + max pool, three times, conv + bn +
relu, global average pool, dropout, fc 10; input 1x40x98) with adam (layer_configs/keywords-params.yaml:
epsW 0.003 decaying tenfold over the run, wc 0.0001), from the same batch files: --cases training cases
in batch files of 400 plus one test batch of 400 cases, made here from random "spectrograms" whose class
shifts their mean in a band of rows (learnable, so the runs are not degenerate).

Each side is a fresh Python process, timed from start to exit (wall clock): imports, reading the batch
files, building the net, every training step, one test pass over the test batch per epoch, and for
convnet its checkpoints and log. The PyTorch loop is what a user would write: unpickle each batch file,
normalize with the training mean and std, shuffle, step through minibatches, evaluate the test batch each
epoch. The two take turns (ours, torch, ours, ...) so that both see the same load; the medians of
--repeats runs are reported, ratio = convnet / torch.
"""
from __future__ import annotations

import argparse
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TORCH_LOOP = r'''
import os, pickle, sys, time
import numpy as np
import torch
torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)
folder, epochs, mini = sys.argv[1], int(sys.argv[3]), int(sys.argv[4])
with open(os.path.join(folder, "batches.meta"), "rb") as f:
    meta = pickle.load(f)
c, h, w = meta["data_shape"]

def load(i):
    with open(os.path.join(folder, f"data_batch_{i}"), "rb") as f:
        b = pickle.load(f)
    return b["data"].T.reshape(-1, c, h, w), np.asarray(b["labels"])

train = [load(i) for i in range(meta["train_range"][0], meta["train_range"][1] + 1)]
xt, yt = load(meta["test_range"][0])
x = np.concatenate([a for a, _ in train]); y = np.concatenate([b for _, b in train])
mean, std = x.mean(0, keepdims=True), x.std(0, keepdims=True) + 1e-6
x = torch.from_numpy((x - mean) / std); y = torch.from_numpy(y)
xt = torch.from_numpy((xt - mean) / std); yt = torch.from_numpy(yt)
nn = torch.nn

def block(cin, cout, pool=True):
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    return layers + ([nn.MaxPool2d(2, 2, ceil_mode=True)] if pool else [])

model = nn.Sequential(*block(c, 32), *block(32, 48), *block(48, 64), *block(64, 96, pool=False),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(96, 10))
opt = torch.optim.Adam(model.parameters(), lr=0.003, betas=(0.9, 0.999), weight_decay=0.0001)
steps = epochs * -(-len(x) // mini)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 ** (s / steps))
loss_fn = nn.CrossEntropyLoss()
g = torch.Generator().manual_seed(0)
for epoch in range(epochs):
    model.train()
    order = torch.randperm(len(x), generator=g)
    for i in range(0, len(x), mini):
        idx = order[i:i + mini]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        err = (model(xt).argmax(1) != yt).float().mean().item()
print(f"torch test error {err:.3f}")
'''


def make_batches(folder, cases, shape=(1, 40, 98), per_batch=400, classes=10, seed=0):
    """Batch files (float32) of random spectrogram-like cases whose class raises a band of rows."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from convnet_cli.data.batch_files import batch_path, encode_batch
    from convnet_cli.fileio import write_pickle_atomic

    rng = np.random.default_rng(seed)
    c, h, w = shape
    n_train = -(-cases // per_batch)
    sizes = [min(per_batch, cases - i * per_batch) for i in range(n_train)] + [per_batch]
    for b, n in enumerate(sizes, 1):
        labels = rng.integers(0, classes, n)
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        band = h // classes
        for k in range(classes):
            x[labels == k, :, k * band:(k + 1) * band, :] += 0.5
        batch, _ = encode_batch(x.reshape(n, -1).T, labels, [f"case{b}_{i}" for i in range(n)])
        write_pickle_atomic(batch_path(folder, b), batch)
    meta = {"label_names": [f"class{k}" for k in range(classes)], "num_vis": c * h * w, "data_shape": list(shape),
            "num_cases_per_batch": per_batch, "num_batches": len(sizes), "train_range": [1, n_train],
            "test_range": [n_train + 1, n_train + 1]}
    write_pickle_atomic(os.path.join(folder, "batches.meta"), meta)


def run(cmd, env) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", type=int, default=1600, help="training cases (a test batch of 400 is added)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--mini", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    cfg = os.path.join(ROOT, "convnet_cli", "layer_configs")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "batches")
        os.makedirs(data)
        make_batches(data, args.cases)
        script = os.path.join(tmp, "torch_loop.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(TORCH_LOOP)
        ours_t, torch_t = [], []
        for r in range(args.repeats):
            save = os.path.join(tmp, f"runs{r}")
            ours_t.append(run([sys.executable, "-m", "convnet_cli", "train", "--data-path", data, "--save-path", save,
                               "--layer-def", os.path.join(cfg, "keywords.yaml"),
                               "--layer-params", os.path.join(cfg, "keywords-params.yaml"),
                               "--epochs", str(args.epochs), "--mini", str(args.mini), "--quiet"], env))
            torch_t.append(run([sys.executable, script, data, str(args.threads), str(args.epochs), str(args.mini)],
                               env))
    o, t = statistics.median(ours_t), statistics.median(torch_t)
    print(f"keywords.yaml, {args.cases} training cases + 400 test, {args.epochs} epochs, minibatch {args.mini}, "
          f"{args.threads} thread(s), start-up included; median of {args.repeats}")
    print(f"convnet train {o:.1f} s   plain PyTorch loop {t:.1f} s   ratio {o / t:.2f}")
    print(f"  runs: convnet {', '.join(f'{v:.1f}' for v in ours_t)}; torch {', '.join(f'{v:.1f}' for v in torch_t)}")


if __name__ == "__main__":
    main()
