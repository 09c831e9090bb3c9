"""`convnet demo` runs the whole pipeline (small settings) and says where everything went."""
from __future__ import annotations

import csv
import json
import os

from tests.helpers import invoke


def test_demo_runs_end_to_end(tmp_path):
    root, batches = tmp_path / "demo", tmp_path / "batches"
    r = invoke(["demo", "--dir", str(root), "--batches", str(batches), "--clips", "30", "--epochs", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    for label in ("audio:", "batches:", "run:", "checkpoint:", "predictions:", "report:", "test AUC"):
        assert label in r.output
    assert sorted(os.listdir(root / "audio")) == ["noise", "upcall"]
    assert len(os.listdir(root / "audio" / "upcall")) == 30
    assert (batches / "batches.meta").exists()
    with open(root / "predictions.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["filename", "predicted", "noise", "upcall", "true"]
    report = json.loads((root / "report.json").read_text())
    assert report["cases"] == len(rows) - 1 and 0 <= report["roc_auc"] <= 1
    # a second run reuses the audio and replaces its own batches
    r = invoke(["demo", "--dir", str(root), "--batches", str(batches), "--clips", "30", "--epochs", "1", "--quiet"])
    assert r.exit_code == 0, r.output
