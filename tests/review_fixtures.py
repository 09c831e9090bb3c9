"""A real detect OUT_DIR for the review tests: recordings at 2 kHz (a hydrophone's rate, which browsers refuse to
play), 16 kHz and 250 kHz (a bat detector's) with 200 Hz tones, run through detect with the hand-made tone
detector of tests/detect_fixtures.py."""
from __future__ import annotations

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
