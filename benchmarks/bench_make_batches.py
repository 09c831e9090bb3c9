"""Clips per second of make-batches, and where the time goes (decode, resample, features, write).

    python benchmarks/bench_make_batches.py [--audio DIR] [--jobs 1,2] [--sample-rate 16000] [--duration 1.0]
                                            [--repeat 2] [--limit N] [--copies K]

--audio defaults to ../shared/audio/keywords/train (1600 one-second 16 kHz FLAC clips) when it exists,
else to 400 generated 1-s WAV clips at 16 kHz. Each setting runs `--repeat` times into a temporary folder;
the best wall time is reported. decode / resample / features are summed over the worker processes (busy
seconds, so with --jobs 2 they can add up to about twice the wall time); imports is the one-off cost of
importing soundfile/scipy in each process (the wall time includes it and the process start-up); write is
the main process's time to assemble, pickle and fsync the batch files and update the statistics. A second table resamples to 8 kHz, so the resample column shows its
cost too (the keywords clips are already at 16 kHz, so the first table resamples nothing).
Worker processes are started with 'spawn' and each imports numpy, soundfile and scipy (~0.5-1 s, once per
run), so --jobs 2 pays off on sets larger than a few thousand clips: try --copies 5.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

KEYWORDS = os.path.join(HERE, "..", "..", "shared", "audio", "keywords", "train")


def generated_set(root, n=400, sr=16000):
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(sr) / sr
    for i in range(n):
        c = f"c{i % 4}"
        os.makedirs(os.path.join(root, c), exist_ok=True)
        x = 0.4 * np.sin(2 * np.pi * (300 + 400 * (i % 4)) * t) + 0.05 * rng.standard_normal(sr)
        sf.write(os.path.join(root, c, f"{i:04d}.wav"), x.astype(np.float32), sr, subtype="PCM_16")
    return root


def linked_copy(src, dst, limit=0, copies=1):
    """A folder-per-class set of symlinks: at most `limit` files (spread over the classes), each `copies` times."""
    from convnet_cli.ingest.sources import find_audio

    files = find_audio(src)
    if limit:
        files = files[::max(1, len(files) // limit)][:limit]
    for rel in files:
        folder, name = os.path.split(rel)
        os.makedirs(os.path.join(dst, folder), exist_ok=True)
        for k in range(copies):
            os.symlink(os.path.abspath(os.path.join(src, rel)), os.path.join(dst, folder, f"{k}_{name}"))
    return dst


def bench(audio, spec, jobs, repeat):
    from convnet_cli.ingest.make_batches import make_batches

    best = None
    for _ in range(repeat):
        out = tempfile.mkdtemp(prefix="bench-batches-")
        try:
            s = make_batches(audio, os.path.join(out, "b"), features=spec, batch_size=500, jobs=jobs, progress=False)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if best is None or s["seconds"] < best["seconds"]:
            best = s
    return best


def table(title, audio, spec, jobs_list, repeat):
    print(f"\n{title}")
    print(f"{'jobs':>4} {'clips':>6} {'wall s':>7} {'clips/s':>8} | {'decode':>7} {'resample':>8} {'features':>8} "
          f"{'imports':>7} {'write':>6}  (s; all but write summed over processes)")
    for jobs in jobs_list:
        s = bench(audio, spec, jobs, repeat)
        t = s["timings"]
        n = s["read"]
        print(f"{jobs:>4} {n:>6} {s['seconds']:>7.2f} {n / s['seconds']:>8.0f} | {t['decode']:>7.2f} "
              f"{t['resample']:>8.2f} {t['features']:>8.2f} {t['imports']:>7.2f} {t['write']:>6.2f}")
        busy = t["decode"] + t["resample"] + t["features"]
        print(f"{'':>4} per clip: decode {1e3 * t['decode'] / n:.3f} ms, resample {1e3 * t['resample'] / n:.3f} ms, "
              f"features {1e3 * t['features'] / n:.3f} ms  "
              f"(features {100 * t['features'] / max(busy, 1e-9):.0f}% of the work in the workers)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audio", default=None)
    ap.add_argument("--jobs", default="1,2")
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="use at most N clips of --audio")
    ap.add_argument("--copies", type=int, default=1, help="use every clip K times (a bigger set from the same files)")
    a = ap.parse_args(argv)

    from convnet_cli.ingest.features import FeatureSpec

    tmp = tempfile.mkdtemp(prefix="bench-audio-")
    try:
        audio = a.audio or (KEYWORDS if os.path.isdir(KEYWORDS) else generated_set(os.path.join(tmp, "gen")))
        if a.limit or a.copies > 1:
            audio = linked_copy(audio, os.path.join(tmp, "set"), a.limit, a.copies)
        jobs = [int(j) for j in a.jobs.split(",")]
        print(f"audio: {os.path.normpath(audio)}   cores: {os.cpu_count()}")
        spec = FeatureSpec(sample_rate=a.sample_rate, duration=a.duration)
        table(f"logmel {spec.shape} at {spec.sample_rate} Hz (n_fft {spec.n_fft}, hop {spec.hop}, "
              f"n_mels {spec.n_mels})", audio, spec, jobs, a.repeat)
        spec8 = FeatureSpec(sample_rate=8000, duration=a.duration, n_fft=256, hop=80)
        table(f"logmel {spec8.shape} resampled to 8000 Hz (n_fft 256, hop 80)", audio, spec8, jobs, a.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
