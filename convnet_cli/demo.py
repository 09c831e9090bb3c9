"""`convnet demo`: the whole pipeline on a synthetic right-whale upcall set.

Upcalls are the North Atlantic right whale's contact call: a tonal sweep rising from about 50 to 250 Hz
over half a second to a second. The demo makes 2-second clips at 2 kHz: upcalls (curved rising sweeps with
a harmonic, at random times and levels) in coloured noise, and negatives holding only noise and the
distractors found in such recordings (steady tones, down-sweeps, clicks), which also appear in positives.
"""
from __future__ import annotations

import os

import numpy as np

SR = 2000
SECONDS = 2.0


def colored_noise(rng, n):
    from scipy.signal import lfilter

    # ocean noise falls with frequency: first-order low-passed noise mixed with white noise
    red = lfilter([1.0], [1.0, -0.9], rng.standard_normal(n))
    red /= red.std() + 1e-9
    return 0.6 * red + 0.4 * rng.standard_normal(n)


def sweep(rng, n, f0, f1, dur, onset, amp, curve):
    t = np.arange(int(dur * SR)) / SR
    frac = t / dur
    freq = f0 + (f1 - f0) * frac ** curve
    phase = 2 * np.pi * np.cumsum(freq) / SR
    env = np.sin(np.pi * frac) ** 2
    sig = env * (np.sin(phase) + 0.3 * np.sin(2 * phase))
    out = np.zeros(n)
    start = int(onset * SR)
    end = min(n, start + len(sig))
    out[start:end] = amp * sig[: end - start]
    return out


def _distractors(rng, n):
    out = np.zeros(n)
    for _ in range(rng.integers(0, 3)):
        kind = rng.integers(0, 3)
        if kind == 0:  # steady tone (a ship, a fish chorus)
            f = rng.uniform(40, 400)
            dur = rng.uniform(0.3, 1.8)
            onset = rng.uniform(0, SECONDS - dur)
            out += sweep(rng, n, f, f, dur, onset, rng.uniform(0.3, 1.0), 1.0)
        elif kind == 1:  # down-sweep, the upcall's look-alike
            dur = rng.uniform(0.4, 1.0)
            onset = rng.uniform(0, SECONDS - dur)
            out += sweep(rng, n, rng.uniform(180, 300), rng.uniform(40, 90), dur, onset, rng.uniform(0.4, 1.0), 1.0)
        else:  # clicks
            for _ in range(rng.integers(1, 6)):
                i = rng.integers(0, n - 20)
                out[i:i + 20] += rng.uniform(1, 3) * rng.standard_normal(20) * np.hanning(20)
    return out


def make_clip(rng, positive: bool) -> np.ndarray:
    n = int(SR * SECONDS)
    x = colored_noise(rng, n) + _distractors(rng, n)
    if positive:
        dur = rng.uniform(0.5, 1.0)
        onset = rng.uniform(0.05, SECONDS - dur - 0.05)
        x += sweep(rng, n, rng.uniform(45, 70), rng.uniform(200, 260), dur, onset, rng.uniform(0.5, 1.6),
                    rng.uniform(1.0, 2.0))
    return (0.1 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def make_upcall_dataset(root: str, per_class: int = 300, seed: int = 0) -> str:
    """Folder-per-class FLAC clips: root/upcall/*.flac and root/noise/*.flac. Returns root."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    for label, positive in (("noise", False), ("upcall", True)):
        folder = os.path.join(root, label)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            path = os.path.join(folder, f"{label}_{i:04d}.flac")
            clip = make_clip(rng, positive)
            if not os.path.exists(path):
                sf.write(path, clip, SR, subtype="PCM_16")
    return root


def config_path(name: str) -> str:
    """A file of the packaged layer_configs/."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "layer_configs", name)
    if not os.path.exists(here):
        raise FileNotFoundError(here)
    return here


def train_demo(batch_dir: str, runs: str, layer_def: str, *, epochs: int, device: str, seed: int,
               quiet: bool) -> tuple:
    """Train packaged `layer_def` (with upcall-params.yaml, minibatches of 32) on `batch_dir` into a new run
    under `runs`: (exit code, run directory or None)."""
    from convnet_cli.train.trainer import TrainOptions, start

    opts = TrainOptions(data_path=batch_dir, save_path=runs, layer_def=config_path(layer_def),
                        layer_params=config_path("upcall-params.yaml"), epochs=epochs, mini=32, device=device,
                        seed=seed, quiet=quiet)
    rc = start(opts)
    if rc:
        return rc, None
    return 0, sorted(os.path.join(runs, d) for d in os.listdir(runs) if d.startswith("ConvNet__"))[-1]


def main(root: str, batch_dir: str, clips: int, epochs: int, device: str, seed: int, quiet: bool) -> int:
    """`convnet demo`: synthetic upcalls -> make-batches -> train -> predict --report; then say how well it did
    and where everything is."""
    import time

    import click

    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.make_batches import make_batches
    from convnet_cli.metrics import format_report
    from convnet_cli.predict.predict import predict_batches, write_csv, write_report
    from convnet_cli.train.checkpoint import resolve_checkpoint

    def say(msg):
        if not quiet:
            click.echo(msg, err=True)

    t0 = time.time()
    audio = os.path.join(root, "audio")
    say(f"1/4 synthetic upcalls: {clips} clips per class -> {audio}")
    make_upcall_dataset(audio, per_class=clips, seed=seed)
    features = FeatureSpec.from_file(config_path("upcall-features.yaml"))
    say(f"2/4 make-batches -> {batch_dir}")
    make_batches(audio, batch_dir, features=features, batch_size=100, test_fraction=0.2, seed=seed,
                 overwrite=True, progress=not quiet)

    runs = os.path.join(root, "runs")
    say(f"3/4 train -> {runs}")
    rc, run_dir = train_demo(batch_dir, runs, "upcall.yaml", epochs=epochs, device=device, seed=seed, quiet=quiet)
    if rc:
        return rc

    say("4/4 predict the test batches with the best checkpoint")
    ckpt = resolve_checkpoint(run_dir)
    preds = predict_batches(ckpt, batch_dir, device=device)
    csv_path = write_csv(preds, os.path.join(root, "predictions.csv"))
    report, report_path = write_report(preds, root, topk=1)
    click.echo(format_report(report))
    click.echo("")
    click.echo(f"audio:        {audio}")
    click.echo(f"batches:      {batch_dir}")
    click.echo(f"run:          {run_dir}")
    click.echo(f"checkpoint:   {ckpt}")
    click.echo(f"predictions:  {csv_path}")
    click.echo(f"report:       {report_path}")
    click.echo(f"test AUC {report.get('roc_auc', float('nan')):.4f}, accuracy {report['accuracy']:.4f}, "
               f"{time.time() - t0:.0f} s in all")
    click.echo(f"next: convnet show -f {run_dir} --cost --filters conv1")
    return 0
