"""detect --device gpu: the same code path as on the CPU (features computed on the device by the window
reader, normalisation and the net there), the same window scores and events."""
import csv

import numpy as np

from tests.detect_fixtures import tone_checkpoint, write_recording
from tests.helpers import invoke


def _scores(path):
    with open(path, encoding="utf-8", newline="") as f:
        return [(r["filename"], r["begin_s"], float(r["tone"])) for r in csv.DictReader(f)]


def test_detect_on_the_gpu_matches_the_cpu(tmp_path):
    ck = tone_checkpoint(tmp_path / "best.npz")
    (tmp_path / "rec").mkdir()
    write_recording(tmp_path / "rec" / "a.wav", 90, [(10, 12), (40, 41.5)])
    write_recording(tmp_path / "rec" / "b.flac", 30, [(5, 7)], sr=1000, seed=2)
    for device in ("cpu", "gpu"):
        r = invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(tmp_path / device), "--quiet",
                    "--scores", "--device", device, "--batch", "32"])
        assert r.exit_code == 0, r.output
    cpu, gpu = _scores(tmp_path / "cpu" / "scores.csv"), _scores(tmp_path / "gpu" / "scores.csv")
    assert [k[:2] for k in cpu] == [k[:2] for k in gpu]
    assert np.allclose([k[2] for k in cpu], [k[2] for k in gpu], atol=1e-4)

    def events(device):  # scores may differ in the last printed digit; the events may not
        return [line.rsplit(",", 1)[0] for line in (tmp_path / device / "detections.csv").read_text().splitlines()]

    assert events("cpu") == events("gpu") and len(events("cpu")) == 4
