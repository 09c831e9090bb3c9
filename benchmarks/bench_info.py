"""What `convnet info BATCH_DIR` costs: per-class counts from the labels of every batch file, read with
convnet_cli/data/batch_labels.py (big payloads seeked over, arrays kept as shape + dtype), against reading
each file with `restricted_load` (what training does: the whole file, the data array built).

    python benchmarks/bench_info.py [--batches 4] [--cases 4000] [--num-vis 4000] [--protocol 5]

Writes a temporary batch folder of float32 batches (num_vis x cases each), then runs each reader in a fresh
Python process (so its peak resident memory is its own) over all the batch files, twice (both passes find
the files in the page cache: they were just written). Prints per reader: milliseconds per pass, the growth
of peak resident memory over the process after imports (VmHWM, reset through /proc/self/clear_refs), and
the bytes the process read through read()/readinto() (/proc/self/io rchar). Linux only.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {root!r})
import numpy as np
from convnet_cli.data.batch_files import restricted_load
from convnet_cli.data.batch_labels import read_batch_labels

def rchar():
    try:
        for line in open("/proc/self/io"):
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        return None

def hwm_kb():
    # VmHWM after a reset (clear_refs 5): the peak of this process alone; ru_maxrss would include the
    # parent's resident set at fork time
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

def reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

def labels_full(p):
    d = restricted_load(p)
    assert d["data"].shape[1] > 0
    return np.asarray(d["labels"])

def labels_skip(p):
    return read_batch_labels(p).labels

read = labels_full if {method!r} == "restricted_load" else labels_skip
files = {files!r}
reset_hwm()
base = hwm_kb()
times = []
r0 = rchar()
for _ in range(2):
    t = time.perf_counter()
    counts = np.zeros(16, np.int64)
    for p in files:
        counts += np.bincount(read(p), minlength=16)
    times.append(time.perf_counter() - t)
r1 = rchar()
peak = hwm_kb()
print(json.dumps({{"first": times[0], "second": times[1], "rss_kb": peak - base,
                  "read_bytes": None if r0 is None else (r1 - r0) // 2, "cases": int(counts.sum())}}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--cases", type=int, default=4000)
    ap.add_argument("--num-vis", type=int, default=4000)
    ap.add_argument("--protocol", type=int, default=5)
    a = ap.parse_args()

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        files = []
        rng = np.random.default_rng(0)
        for i in range(1, a.batches + 1):
            p = os.path.join(tmp, f"data_batch_{i}")
            d = {"labels": [int(v) for v in rng.integers(0, 10, a.cases)],
                 "filenames": [f"clip_{i}_{j}.wav" for j in range(a.cases)],
                 "data": rng.standard_normal((a.num_vis, a.cases), dtype=np.float32)}
            with open(p, "wb") as f:
                pickle.dump(d, f, protocol=a.protocol)
            files.append(p)
        size = sum(os.path.getsize(p) for p in files)
        print(f"{a.batches} batch files, {a.cases} cases x {a.num_vis} float32 each, protocol {a.protocol}: "
              f"{size / 1e6:.1f} MB")
        for method in ("restricted_load", "batch_labels"):
            code = _CHILD.format(root=ROOT, method=method, files=files)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout)
            read = "n/a" if r["read_bytes"] is None else f"{r['read_bytes'] / 1e6:8.2f} MB"
            print(f"  {method:<16} {r['first'] * 1e3:8.1f} ms pass 1 {r['second'] * 1e3:8.1f} ms pass 2  "
                  f"peak RSS +{r['rss_kb'] / 1024:7.1f} MiB  read {read} a pass  ({r['cases']} cases)")


if __name__ == "__main__":
    main()
