"""Peak memory of make-batches --annotations and detect on a long ultrasonic recording (SPEC 19: sample rates up
to 768 kHz in bounded memory).

    python benchmarks/bench_high_rate.py [--minutes 10] [--rate 384000] [--channels 1] [--window-hop 0.25]

1. A --minutes long --rate Hz WAV (PCM_16, --channels channels) is written 10 s at a time into a temp folder:
   white noise with a 40 kHz, 10-ms call every ~2 s (on the last channel only), and a Raven table annotating
   every call (its Channel column the last channel).
2. `convnet make-batches RECORDINGS BATCH_DIR --annotations TABLES --features layer_configs/bat-features.yaml`
   (256 kHz, 15-120 kHz, 0.25-s windows of 64 x 249) runs in a child process with --jobs 1, and
3. `convnet detect` runs over the recording with a checkpoint on those features (one fc layer + softmax with
   random weights: what is measured is the reading, resampling and features, not what the net learned),
   also with `--channel all` when the file has more than one channel.
Each child reports its own high-water mark (/proc/self/status VmHWM); the table gives it beside what decoding
the recording whole would take (its samples as float32, before any resampling).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from child_rss import convnet_peak_mb as child  # noqa: E402
BAT_FEATURES = os.path.join(ROOT, "convnet_cli", "layer_configs", "bat-features.yaml")
BLOCK_S = 10.0
CALL_EVERY = 2.0

def write_recording(path: str, minutes: float, rate: int, channels: int, seed: int = 0) -> list:
    """The WAV, BLOCK_S seconds at a time; returns the calls' (begin, end) seconds."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total = int(round(minutes * 60 * rate))
    step = int(BLOCK_S * rate)
    calls = [(t, t + 0.01) for t in np.arange(1.0, minutes * 60 - 1.0, CALL_EVERY)]
    with sf.SoundFile(path, "w", samplerate=rate, channels=channels, subtype="PCM_16", format="WAV") as f:
        for a in range(0, total, step):
            b = min(total, a + step)
            t = np.arange(a, b) / rate
            x = 0.01 * rng.standard_normal((b - a, channels))
            for begin, end in calls:
                if begin < b / rate and end > a / rate:
                    on = (t >= begin) & (t < end)
                    x[on, -1] += 0.3 * np.sin(2 * np.pi * 40000.0 * t[on])
            f.write(x.astype(np.float32))
    return calls


def write_table(path: str, calls, channel: int):
    lines = ["Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tAnnotation"]
    for i, (b, e) in enumerate(calls, 1):
        lines.append(f"{i}\tSpectrogram 1\t{channel}\t{b:.4f}\t{e:.4f}\t35000\t45000\tpip")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def make_checkpoint(path: str) -> str:
    import numpy as np

    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.train.checkpoint import save_checkpoint

    spec = FeatureSpec.from_file(BAT_FEATURES, {})
    n = int(np.prod(spec.shape))
    rng = np.random.default_rng(0)
    layers = ("data: {type: data, dataIdx: 0}\nlabels: {type: data, dataIdx: 1}\n"
              "fc1: {type: fc, inputs: data, outputs: 2}\nprobs: {type: softmax, inputs: fc1}\n"
              "logprob: {type: cost.logreg, inputs: [labels, probs]}\n")
    params = "DEFAULT: {epsW: 0.01, epsB: 0.01, momW: 0.9, momB: 0.9, wc: 0}\nlogprob: {coeff: 1}\n"
    feats = dict(spec.to_dict(), window_hop=0.125)
    state = {"epoch": 1, "batchnum": 1, "options": {}, "layer_def": layers, "layer_params": params,
             "layer_def_name": "bat.yaml", "layer_params_name": "bat-params.yaml", "label_names": ["background", "pip"],
             "data_shape": list(spec.shape), "data_mean": [-10.0] * n, "data_std": [3.0] * n, "features": feats,
             "history": [], "best": None}
    arrays = {"fc1/weights": (0.001 * rng.standard_normal((2, n))).astype(np.float32),
              "fc1/biases": np.zeros(2, np.float32)}
    return save_checkpoint(path, arrays, state)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=384000)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--window-hop", type=float, default=0.25, help="make-batches' and detect's hop, seconds")
    ap.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads of the children")
    a = ap.parse_args(argv)
    os.environ.update({k: str(a.threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    with tempfile.TemporaryDirectory() as tmp:
        rec, tables = os.path.join(tmp, "rec"), os.path.join(tmp, "tables")
        os.makedirs(rec)
        os.makedirs(tables)
        wav = os.path.join(rec, "bat.wav")
        t0 = time.perf_counter()
        calls = write_recording(wav, a.minutes, a.rate, a.channels)
        write_table(os.path.join(tables, "bat.Table.1.selections.txt"), calls, a.channels)
        size = os.path.getsize(wav) / 2 ** 20
        whole = a.minutes * 60 * a.rate * a.channels * 4 / 2 ** 20
        print(f"recording: {a.minutes:g} min at {a.rate:,} Hz, {a.channels} channel(s), {size:,.0f} MiB on disk "
              f"(PCM_16), {whole:,.0f} MiB as float32 if decoded whole; {len(calls)} calls; written in "
              f"{time.perf_counter() - t0:.0f} s")
        ckpt = make_checkpoint(os.path.join(tmp, "bat.npz"))
        rows = []
        channel = ["--channel", "all"] if a.channels > 1 else []
        mb = ["make-batches", rec, os.path.join(tmp, "batches"), "--annotations", tables, "--features", BAT_FEATURES,
              "--window-hop", str(a.window_hop), "--background-ratio", "3", "--jobs", "1", "--quiet",
              "--test-fraction", "0", "--label-names", "background,pip"] + channel
        rows.append(("make-batches --annotations" + (" --channel all" if channel else ""),) + child(mb))
        det = ["detect", "-f", ckpt, rec, "--out", os.path.join(tmp, "det"), "--quiet", "--window-hop",
               str(a.window_hop)]
        rows.append(("detect",) + child(det))
        if channel:
            rows.append(("detect --channel all",) + child(det + ["--overwrite"] + channel))
    audio_s = a.minutes * 60
    print("\n| command | peak RSS (MiB) | wall (s) | x real time |\n|---|---:|---:|---:|")
    for name, rss, secs in rows:
        print(f"| {name} | {rss:,.0f} | {secs:,.1f} | {audio_s / secs:,.1f} |")


if __name__ == "__main__":
    main()
