"""The paths added for multi-label targets, PCEN features and per-channel streams against the paths they
extend: make-batches --annotations and detect, x real time and peak RSS, each run in a fresh process.

    python benchmarks/bench_new_paths.py [--hours 1] [--repeats 2] [--threads 2]

Synthesises one recording (bench_detect.py's coloured noise with an upcall every ~30 s, 2 kHz FLAC) and a
stereo copy (channel 2: other noise), a Raven table of its calls, and a freshly initialised upcall-net
checkpoint per front end. Rows (the first of each group is the reference):
- make-batches --annotations: logmel; pcen (the same settings, kind: pcen); --multi-label; the stereo file
  with --channel 1 (the channel read) and --channel all (two streams: x real time counts audio per channel);
- detect: logmel; pcen; the stereo file with --channel 1 and --channel all.
Each row is run --repeats times, alternating with the others; the fastest run is reported (the machine is
shared: the load average is printed).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def write_stereo(mono: str, path: str, seed: int = 1) -> str:
    """mono's samples on channel 1 and independent noise on channel 2, block by block."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    with sf.SoundFile(mono) as src, sf.SoundFile(path, "w", samplerate=src.samplerate, channels=2,
                                                 subtype="PCM_16", format="FLAC") as dst:
        for block in src.blocks(blocksize=60 * src.samplerate, dtype="float32"):
            other = 0.05 * rng.standard_normal(len(block)).astype(np.float32)
            dst.write(np.stack([block, other], axis=1))
    return path


def write_table(path: str, recording_s: float):
    rows = ["Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tAnnotation"]
    for i, b in enumerate(range(10, int(recording_s) - 5, 30), start=1):
        rows.append(f"{i}\tSpectrogram 1\t1\t{b:.3f}\t{b + 1.0:.3f}\t50\t250\tupcall")
    with open(path, "w", newline="") as f:
        f.write("\r\n".join(rows) + "\r\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import yaml

    from bench_detect import make_checkpoint, write_recording
    from child_rss import convnet_peak_mb
    from convnet_cli.demo import config_path

    work = tempfile.mkdtemp(prefix="bench-new-paths-")
    try:
        mono_dir, stereo_dir, tables = (os.path.join(work, d) for d in ("mono", "stereo", "tables"))
        for d in (mono_dir, stereo_dir, tables):
            os.makedirs(d)
        mono = write_recording(os.path.join(mono_dir, "rec.flac"), args.hours)
        write_stereo(mono, os.path.join(stereo_dir, "rec.flac"))
        write_table(os.path.join(tables, "rec.Table.1.selections.txt"), args.hours * 3600)
        with open(config_path("upcall-features.yaml"), encoding="utf-8") as f:
            logmel = yaml.safe_load(f)
        pcen = dict(logmel, kind="pcen")
        feats = {}
        for name, d in (("logmel", logmel), ("pcen", pcen)):
            feats[name] = os.path.join(work, f"{name}.yaml")
            with open(feats[name], "w", encoding="utf-8") as f:
                yaml.safe_dump(d, f)
        ckpt = {name: make_checkpoint(os.path.join(work, f"{name}.npz"), mono, d)
                for name, d in (("logmel", logmel), ("pcen", pcen))}
        audio_s = args.hours * 3600
        runs = {
            ("make-batches", "logmel (reference)"): (["make-batches", mono_dir, "OUT", "--annotations", tables,
                                                      "--features", feats["logmel"], "--jobs", "1", "--test-fraction", "0"], 1),
            ("make-batches", "pcen"): (["make-batches", mono_dir, "OUT", "--annotations", tables,
                                        "--features", feats["pcen"], "--jobs", "1", "--test-fraction", "0"], 1),
            ("make-batches", "--multi-label"): (["make-batches", mono_dir, "OUT", "--annotations", tables,
                                                 "--features", feats["logmel"], "--jobs", "1", "--test-fraction", "0", "--multi-label"], 1),
            ("make-batches", "stereo, --channel 1"): (["make-batches", stereo_dir, "OUT", "--annotations", tables,
                                                       "--features", feats["logmel"], "--jobs", "1", "--test-fraction", "0",
                                                       "--channel", "1"], 1),
            ("make-batches", "stereo, --channel all"): (["make-batches", stereo_dir, "OUT", "--annotations",
                                                         tables, "--features", feats["logmel"], "--jobs", "1", "--test-fraction", "0",
                                                         "--channel", "all"], 2),
            ("detect", "logmel (reference)"): (["detect", "-f", ckpt["logmel"], mono_dir, "--out", "OUT"], 1),
            ("detect", "pcen"): (["detect", "-f", ckpt["pcen"], mono_dir, "--out", "OUT"], 1),
            ("detect", "stereo, --channel 1"): (["detect", "-f", ckpt["logmel"], stereo_dir, "--out", "OUT",
                                                 "--channel", "1"], 1),
            ("detect", "stereo, --channel all"): (["detect", "-f", ckpt["logmel"], stereo_dir, "--out", "OUT",
                                                   "--channel", "all"], 2),
        }
        best = {}
        for _ in range(args.repeats):
            for key, (cmd, streams) in runs.items():
                out = os.path.join(work, "out")
                shutil.rmtree(out, ignore_errors=True)
                rss, wall = convnet_peak_mb([out if a == "OUT" else a for a in cmd] + ["--quiet"], " ".join(key))
                shutil.rmtree(out, ignore_errors=True)
                if key not in best or wall < best[key][1]:
                    best[key] = (rss, wall)
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
        print(f"{args.hours:g} h of 2 kHz audio, upcall features and net, {args.threads} thread(s), fastest of "
              f"{args.repeats}; load average after: {load}\n")
        print("| command | path | wall s | x real time | vs reference | peak RSS MiB | vs reference |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for (command, path), (rss, wall) in best.items():
            ref_rss, ref_wall = best[(command, "logmel (reference)")]
            streams = runs[(command, path)][1]
            rate = audio_s * streams / wall
            ref_rate = audio_s / ref_wall
            print(f"| {command} | {path} | {wall:.1f} | {rate:,.0f} | {rate / ref_rate:.2f} | {rss:.0f} | "
                  f"{rss / ref_rss:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
