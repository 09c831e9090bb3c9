"""A real detect OUT_DIR for the review tests: recordings at 2 kHz (a hydrophone's rate, which browsers refuse to
play), 16 kHz and 250 kHz (a bat detector's) with 200 Hz tones, run through detect with the hand-made tone
detector of tests/detect_fixtures.py."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.detect_fixtures import tone_checkpoint, write_recording
from tests.helpers import invoke

TONES = {"a.wav": (2000, 30.0, [(3.0, 5.0), (10.0, 11.0), (20.0, 22.5)]),
         "b.wav": (16000, 12.0, [(0.2, 1.5), (9.0, 11.8)]),
         "c.wav": (250000, 6.0, [(2.0, 3.0)])}


def detect_dir(root):
    """-> (recordings folder, detect OUT_DIR) under root."""
    rec = root / "rec"
    rec.mkdir(parents=True)
    for i, (name, (sr, seconds, tones)) in enumerate(TONES.items()):
        write_recording(rec / name, seconds, tones, sr=sr, seed=i)
    ck = tone_checkpoint(root / "best.npz")
    out = root / "det"
    r = invoke(["detect", "-f", str(ck), str(rec), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    return rec, out


def start_server(det, out, port=0):
    """`python -m convnet_cli review DET --out OUT --port 0` as a process of its own -> (Popen, page URL)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-m", "convnet_cli", "review", str(det), "--out", str(out), "--select",
                          "top", "--port", str(port), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env)
    for line in p.stdout:
        if "serving the review page at " in line:
            return p, line.split(" at ", 1)[1].split()[0]
    raise AssertionError(f"the server did not start (exit {p.wait()})")


def verdicts_on_disk(folder):
    """({id: verdict} of verdicts.csv, {id: verdict} of verdicts.selections.txt as make-batches reads it)."""
    from convnet_cli.ingest.annotations import read_tables
    from convnet_cli.review.sample import read_sample
    from convnet_cli.review.verdicts import read_verdicts

    items, _ = read_sample(str(folder))
    by_key = {(it.path, it.begin, it.end): it.id for it in items}
    table = {by_key[(s.recording, s.begin, s.end)]: s.verdict
             for s in read_tables(os.path.join(str(folder), "verdicts.selections.txt"))}
    return read_verdicts(str(folder), items), table
