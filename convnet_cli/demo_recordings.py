"""`convnet demo --recordings`: long annotated recordings -> make-batches --annotations -> train -> detect on
held-out recordings -> evaluate.

The recordings: 2-minute files at 2 kHz of ocean-like noise whose level and colour drift over the minutes,
a ship tone that wanders in pitch now and then, and distractors (steady tones, down-sweeps, click trains).
Two call types are scattered through them, each with a Raven selection table row:
- `upcall`: the right whale's contact call, a curved sweep rising from ~50 to ~250 Hz over 0.5-1 s
  (the same synthesis as the clip demo, convnet_cli/demo.py);
- `gunshot`: a loud broadband pulse with a short ringing tail, 0.2-0.5 s, also a right-whale sound.
Tables are written as Raven Pro writes them: `<stem>.Table.1.selections.txt`, each selection listed once
per view (`Waveform 1`, `Spectrogram 1`), frequencies per row, the class in `Annotation`.
"""
from __future__ import annotations

import os

import numpy as np

from convnet_cli.demo import SR, colored_noise, sweep, train_demo

CALL_TYPES = ("upcall", "gunshot")


def _drift(rng, n, points_per_minute=4, lo=0.5, hi=1.8):
    """A slowly wandering positive gain (n,): a smoothed random walk through a few knots a minute."""
    k = max(2, int(n / SR / 60 * points_per_minute) + 2)
    knots = np.exp(np.cumsum(rng.normal(0, 0.35, k)))
    knots = lo + (hi - lo) * (knots - knots.min()) / (np.ptp(knots) + 1e-9)
    return np.interp(np.arange(n), np.linspace(0, n, k), knots)


def _noise(rng, n):
    """Two coloured noises mixed in a drifting proportion, at a drifting level."""
    from scipy.signal import lfilter

    white = rng.standard_normal(n)
    red = lfilter([1.0], [1.0, -0.95], rng.standard_normal(n))
    red /= red.std() + 1e-9
    mix = _drift(rng, n, lo=0.2, hi=0.9)
    return _drift(rng, n) * (mix * red + (1 - mix) * white) * 0.5 + 0.3 * colored_noise(rng, n)


def _ship(rng, n):
    """A ship passing: a tone wandering in pitch (60-200 Hz), fading in and out over 20-60 s."""
    out = np.zeros(n)
    for _ in range(rng.integers(0, 3)):
        dur = min(n, int(rng.uniform(20, 60) * SR))
        start = int(rng.integers(0, max(1, n - dur)))
        t = np.arange(dur) / SR
        f = rng.uniform(60, 200) + rng.uniform(-20, 20) * np.sin(2 * np.pi * t / rng.uniform(15, 40))
        env = np.sin(np.pi * t / t[-1]) ** 2
        out[start:start + dur] += rng.uniform(0.2, 0.6) * env * np.sin(2 * np.pi * np.cumsum(f) / SR)
    return out


def _upcall(rng):
    dur = rng.uniform(0.5, 1.0)
    n = int(dur * SR)
    x = sweep(rng, n, rng.uniform(45, 70), rng.uniform(200, 260), dur, 0.0, 1.0, rng.uniform(1.0, 2.0))
    return x, 40.0, 300.0


def _gunshot(rng):
    dur = rng.uniform(0.2, 0.5)
    n = int(dur * SR)
    t = np.arange(n) / SR
    env = np.exp(-t / (dur / 4))
    x = env * rng.standard_normal(n) * 2.0
    x += env * np.sin(2 * np.pi * rng.uniform(80, 150) * t)  # the ringing of the water column
    return x, 20.0, 900.0


def _distractor(rng):
    kind = rng.integers(0, 3)
    if kind == 0:  # steady tone
        dur = rng.uniform(0.4, 2.0)
        f = rng.uniform(40, 400)
        return sweep(rng, int(dur * SR), f, f, dur, 0.0, rng.uniform(0.3, 0.9), 1.0)
    if kind == 1:  # down-sweep: the upcall's mirror image
        dur = rng.uniform(0.4, 1.0)
        return sweep(rng, int(dur * SR), rng.uniform(180, 300), rng.uniform(40, 90), dur, 0.0,
                      rng.uniform(0.4, 1.0), 1.0)
    x = np.zeros(int(rng.uniform(0.3, 1.0) * SR))  # a click train (dolphins, snapping shrimp)
    for i in rng.integers(0, len(x) - 20, rng.integers(3, 10)):
        x[i:i + 20] += rng.uniform(0.5, 1.5) * rng.standard_normal(20) * np.hanning(20)
    return x


def make_recording(rng, seconds: float, distractors_per_s: float = 0.1):
    """(signal float32 (n,) at SR, [(begin, end, label, low Hz, high Hz)]); `distractors_per_s`: steady tones,
    down-sweeps and click trains per second of audio."""
    n = int(seconds * SR)
    x = _noise(rng, n) + _ship(rng, n)
    level = np.sqrt(np.convolve(x ** 2, np.ones(SR) / SR, mode="same")) + 1e-6  # local noise level
    events = []
    t = rng.uniform(1.0, 5.0)
    while t < seconds - 3.0:
        label = CALL_TYPES[int(rng.integers(0, 2))]
        call, lo, hi = (_upcall if label == "upcall" else _gunshot)(rng)
        i = int(t * SR)
        snr = rng.uniform(1.5, 3.5)
        x[i:i + len(call)] += snr * level[i] * call
        events.append((t, t + len(call) / SR, label, lo, hi))
        t += len(call) / SR + rng.uniform(3.0, 8.0)  # 2-s windows can tell calls this far apart
    for _ in range(int(seconds * distractors_per_s)):
        d = _distractor(rng)
        i = int(rng.integers(0, n - len(d)))
        x[i:i + len(d)] += rng.uniform(1.0, 2.5) * level[i] * d
    x = 0.3 * x / (np.abs(x).max() + 1e-9)
    return x.astype(np.float32), events


def raven_table(events, label_col: str = "Annotation") -> str:
    """Raven Pro's layout: one row per selection and view, tab-separated; the label in `label_col`."""
    head = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
            label_col]
    lines = ["\t".join(head)]
    for i, (b, e, label, lo, hi) in enumerate(events, 1):
        for view in ("Waveform 1", "Spectrogram 1"):
            lines.append("\t".join([str(i), view, "1", f"{b:.4f}", f"{e:.4f}", f"{lo:.1f}", f"{hi:.1f}", label]))
    return "\n".join(lines) + "\n"


def write_annotated_sets(root: str, counts: dict, make, prefix: str, sr: int, label_col: str = "Annotation"):
    """root/recordings/<part>/<prefix>NN.flac and root/annotations/<part>/<prefix>NN.Table.1.selections.txt for
    each (part, count) of `counts`, numbered on across the parts; `make()` -> (samples, events) per recording.
    A recording already on disk is kept (tables are rewritten). Returns ({part: (recordings, tables)},
    [each recording's events, in order])."""
    import soundfile as sf

    from convnet_cli.fileio import write_text_atomic

    out, every, k = {}, [], 0
    for part, count in counts.items():
        rec_dir = os.path.join(root, "recordings", part)
        ann_dir = os.path.join(root, "annotations", part)
        os.makedirs(rec_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for _ in range(count):
            k += 1
            x, events = make()
            stem = f"{prefix}{k:02d}"
            path = os.path.join(rec_dir, stem + ".flac")
            if not os.path.exists(path):
                tmp = os.path.join(rec_dir, f".{stem}.tmp.flac")
                sf.write(tmp, x, sr, subtype="PCM_16")
                os.replace(tmp, path)
            write_text_atomic(os.path.join(ann_dir, f"{stem}.Table.1.selections.txt"), raven_table(events, label_col))
            every.append(events)
        out[part] = (rec_dir, ann_dir)
    return out, every


def make_annotated_recordings(root: str, n_train: int = 7, n_heldout: int = 3, seconds: float = 120.0,
                              seed: int = 0) -> dict:
    """root/recordings/{train,heldout}/recNN.flac and root/annotations/{train,heldout}/recNN.Table.1.selections.txt.
    Returns {'train': (recordings, tables), 'heldout': (...), 'calls': {label: count}}."""
    rng = np.random.default_rng(seed)
    out, every = write_annotated_sets(root, {"train": n_train, "heldout": n_heldout},
                                      lambda: make_recording(rng, seconds), "rec", SR)
    calls = {c: 0 for c in CALL_TYPES}
    for events in every:
        for e in events:
            calls[e[2]] += 1
    out["calls"] = calls
    return out


def run(root: str, batch_dir: str, epochs: int = 15, device: str = "cpu", seed: int = 0, quiet: bool = False,
        echo=print, say=print) -> dict:
    """The whole long-recording pipeline; returns {'evaluation': ..., 'paths': {...}, 'seconds': ...}."""
    import time

    import yaml

    from convnet_cli.demo import config_path
    from convnet_cli.detect.detect import detect
    from convnet_cli.detect.evaluate import evaluate, format_table, load_pair, plot_pr, write_json
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.recordings import make_batches_from_annotations
    from convnet_cli.ingest.recordings import summary_line as windows_summary

    t0 = time.time()
    say(f"1/5 synthetic annotated recordings (2 kHz, 7 x 2 min to train on, 3 x 2 min held out) -> {root}")
    made = make_annotated_recordings(root, seed=seed)
    (train_rec, train_ann), (held_rec, held_ann) = made["train"], made["heldout"]
    say(f"    {made['calls']['upcall']} upcalls and {made['calls']['gunshot']} gunshots in Raven tables under "
        f"{os.path.join(root, 'annotations')}")

    with open(config_path("upcall-features.yaml"), encoding="utf-8") as f:
        features = FeatureSpec.from_dict(yaml.safe_load(f), "upcall-features.yaml")
    say(f"2/5 make-batches --annotations (2-s windows every 1 s) -> {batch_dir}")
    summary = make_batches_from_annotations(
        train_rec, batch_dir, train_ann, features=features, window_hop=1.0, min_overlap=0.5,
        background="background", background_ratio=1.0, batch_size=200, test_fraction=0.15, seed=seed,
        overwrite=True, progress=not quiet, warn=say)
    say("    " + windows_summary(summary))

    runs = os.path.join(root, "runs")
    say(f"3/5 train {os.path.basename(config_path('calls.yaml'))} -> {runs}")
    rc, run_dir = train_demo(batch_dir, runs, "calls.yaml", epochs=epochs, device=device, seed=seed, quiet=quiet)
    if rc:
        raise SystemExit(rc)

    out = os.path.join(root, "detections")
    say(f"4/5 detect on the held-out recordings -> {out}")
    s = detect(run_dir, [held_rec], out, overwrite=True, device=device, progress=not quiet)
    say(f"    {s.detections} detections in {s.audio_s / 60:.0f} min of audio, {s.realtime:,.0f}x real time")

    ev_dir = os.path.join(root, "evaluation")
    say(f"5/5 evaluate against the held-out annotations -> {ev_dir}")
    dets, anns, classes, notes = load_pair(out, held_ann)
    ev = evaluate(dets, anns, classes, 0.5, 0.9, notes)
    json_path = write_json(ev.result, ev_dir)
    try:
        png = plot_pr(ev.curves, os.path.join(ev_dir, "pr_curve.png"), 0.9,
                      title="convnet demo --recordings: held-out recordings")
    except ImportError:
        png = None
    echo(format_table(ev.result))
    return {"evaluation": ev.result, "seconds": time.time() - t0, "run_dir": run_dir,
            "paths": {"recordings": os.path.join(root, "recordings"), "annotations": os.path.join(root, "annotations"),
                      "batches": batch_dir, "run": run_dir, "tables": out, "detections": s.files.get("detections"),
                      "evaluation": json_path, "pr_curve": png}}


def main(root: str, batch_dir: str, epochs: int, device: str, seed: int, quiet: bool) -> int:
    """`convnet demo --recordings`: run, then say how well it did and where everything is."""
    import click

    def say(msg):
        if not quiet:
            click.echo(msg, err=True)

    r = run(root, batch_dir, epochs=epochs, device=device, seed=seed, quiet=quiet, echo=click.echo, say=say)
    p, ov = r["paths"], r["evaluation"]["overall"]

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    click.echo("")
    click.echo(f"recordings:    {p['recordings']}  (annotations: {p['annotations']})")
    click.echo(f"batches:       {p['batches']}")
    click.echo(f"run:           {p['run']}")
    click.echo(f"Raven tables:  {p['tables']}{os.sep}*.selections.txt  (open them in Raven Pro with the recordings "
               f"under {os.path.join(p['recordings'], 'heldout')})")
    click.echo(f"detections:    {p['detections']}")
    click.echo(f"evaluation:    {p['evaluation']}" + (f"  PR curve: {p['pr_curve']}" if p["pr_curve"] else ""))
    click.echo(f"held-out recordings: precision {pct(ov['precision'])}, recall {pct(ov['recall'])}, "
               f"average precision {pct(ov['average_precision'])}; {r['seconds']:.0f} s in all")
    click.echo(f"next: convnet detect -f {p['run']} YOUR_RECORDINGS --out DETECTIONS")
    return 0
