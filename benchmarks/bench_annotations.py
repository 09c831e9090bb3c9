"""Ingest of long 2 kHz recordings: x real time and peak memory for 1 h vs 6 h (docs/CONFIG.md, issue 11).

    python benchmarks/bench_annotations.py [--hours 1,6] [--jobs 2] [--source-rate 2000] [--keep DIR]

Synthesises one recording per length (white noise with a tone call every 30 s, FLAC PCM_16, written in 60 s
blocks) and a Raven table for it, then measures, each in a fresh subprocess (so its peak RSS is its own):
- `stream`: iter_window_features over the whole recording in one process: decode + resample + features
  (upcall-features.yaml: 2 s logmel windows, 40 mel bands, n_fft 256, hop 50; window hop 1 s);
- `make-batches`: the whole `convnet make-batches RECORDINGS OUT --annotations TABLES --jobs N` (tables, plan,
  extraction in N worker processes, batch files written, fsync'd). Peak RSS is given for the main process
  and for the largest worker (getrusage(RUSAGE_CHILDREN) of the main process).
x real time = seconds of audio / wall seconds. With --source-rate 16000 the recordings are written at 16 kHz
and resampled to 2 kHz on the way in.
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
FEATURES = os.path.join(ROOT, "convnet_cli", "layer_configs", "upcall-features.yaml")


def synthesise(path, hours, sr):
    """White noise with a 1 s 180 Hz call every 30 s; returns the call times. Written in 60 s blocks."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    n = int(hours * 3600 * sr)
    block = 60 * sr
    calls = [(t + 10.0, t + 11.0) for t in np.arange(0, hours * 3600 - 30, 30.0)]
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, format="FLAC", subtype="PCM_16") as f:
        for a in range(0, n, block):
            b = min(n, a + block)
            t = np.arange(a, b) / sr
            x = 0.05 * rng.standard_normal(b - a)
            on = ((t % 30.0) >= 10.0) & ((t % 30.0) < 11.0)
            x[on] += 0.4 * np.sin(2 * np.pi * 180.0 * t[on])
            f.write(x.astype(np.float32))
    return calls


def write_table(path, calls):
    rows = ["Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tAnnotation"]
    for i, (b, e) in enumerate(calls, start=1):
        for view in ("Waveform 1", "Spectrogram 1"):
            rows.append(f"{i}\t{view}\t1\t{b:.3f}\t{e:.3f}\t100\t300\tupcall")
    with open(path, "w", newline="") as f:
        f.write("\r\n".join(rows) + "\r\n")


STREAM = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from convnet_cli.ingest.features import FeatureSpec
from convnet_cli.ingest.windows import iter_window_features
spec = FeatureSpec.from_file({features!r})
import scipy.signal, scipy.fft, soundfile  # imports outside the timing
t0 = time.perf_counter()
n = 0
for starts, feats in iter_window_features({path!r}, spec, 1.0):
    n += len(starts)
dt = time.perf_counter() - t0
print(json.dumps({{"windows": n, "seconds": dt, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

MAKE = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from convnet_cli.ingest.features import FeatureSpec
from convnet_cli.ingest.recordings import make_batches_from_annotations
spec = FeatureSpec.from_file({features!r})
t0 = time.perf_counter()
s = make_batches_from_annotations({rec!r}, {out!r}, {tables!r}, features=spec, window_hop=1.0, min_overlap=0.5,
                 background="background", background_ratio=None, test_fraction=0.0, jobs={jobs}, progress=False, warn=lambda l: None)
dt = time.perf_counter() - t0
print(json.dumps({{"windows": s["windows"], "seconds": dt, "timings": s["timings"],
                   "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
"""


def run_child(code):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", default="1,6")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--source-rate", type=int, default=2000)
    ap.add_argument("--keep", help="keep the synthesised recordings in this folder (reused when present)")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="bench-annotations-")
    rows = []
    try:
        for h in [float(v) for v in args.hours.split(",")]:
            name = f"rec_{h:g}h_{args.source_rate}"
            rec_dir, tab_dir = os.path.join(work, name, "rec"), os.path.join(work, name, "tables")
            path = os.path.join(rec_dir, f"{name}.flac")
            if not os.path.exists(path):
                os.makedirs(rec_dir, exist_ok=True)
                os.makedirs(tab_dir, exist_ok=True)
                t0 = time.perf_counter()
                calls = synthesise(path, h, args.source_rate)
                write_table(os.path.join(tab_dir, f"{name}.Table.1.selections.txt"), calls)
                print(f"synthesised {h:g} h at {args.source_rate} Hz in {time.perf_counter() - t0:.1f} s "
                      f"({os.path.getsize(path) / 2**20:.0f} MiB FLAC)", file=sys.stderr)
            audio_s = h * 3600
            st = run_child(STREAM.format(root=ROOT, features=FEATURES, path=path))
            rows.append((f"{h:g} h", "stream, 1 process", st["windows"], st["seconds"], audio_s / st["seconds"],
                         f"{st['maxrss_mb']:.0f}"))
            out = os.path.join(work, name, "batches")
            shutil.rmtree(out, ignore_errors=True)
            mk = run_child(MAKE.format(root=ROOT, features=FEATURES, rec=rec_dir, out=out, tables=tab_dir,
                                       jobs=args.jobs))
            shutil.rmtree(out, ignore_errors=True)
            print(f"{h:g} h make-batches: " + ", ".join(f"{k} {v:.1f} s" for k, v in mk["timings"].items()),
                  file=sys.stderr)
            rows.append((f"{h:g} h", f"make-batches --jobs {args.jobs}", mk["windows"], mk["seconds"],
                         audio_s / mk["seconds"], f"{mk['maxrss_mb']:.0f} (workers {mk['children_maxrss_mb']:.0f})"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nsource {args.source_rate} Hz -> 2000 Hz, upcall-features.yaml, window hop 1 s, {os.cpu_count()} CPUs\n")
    print("| recording | what | windows | wall s | x real time | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.0f} | {r[5]} |")


if __name__ == "__main__":
    main()
