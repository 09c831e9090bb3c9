"""A conv + bidirectional-RNN network (whale-birnn-small.yaml, the packaged config) trains on the demo's
synthetic upcalls through the CLI, and its test AUC beats chance by far."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from convnet_cli.demo import config_path, make_upcall_dataset
from tests.helpers import invoke
from tests.test_cli_train import only_run


@pytest.mark.slow
def test_conv_birnn_learns_synthetic_upcalls(tmp_path):
    audio = make_upcall_dataset(str(tmp_path / "audio"), per_class=60, seed=3)
    batches = tmp_path / "batches"
    r = invoke(["make-batches", audio, str(batches), "--features", config_path("whale-birnn-features.yaml"),
                "--batch-size", "40", "--test-fraction", "0.25", "--jobs", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    r = invoke(["train", "--data-path", str(batches), "--save-path", str(tmp_path / "runs"),
                "--layer-def", config_path("whale-birnn-small.yaml"),
                "--layer-params", config_path("whale-birnn-small-params.yaml"),
                "--epochs", "8", "--mini", "16", "--seed", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    run = only_run(tmp_path / "runs")
    out = tmp_path / "preds.csv"
    r = invoke(["predict", "-f", run, "--out", str(out), "--report"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["cases"] == 40
    assert report["roc_auc"] >= 0.8, report
    # the recurrent weights were saved in PyTorch's layout
    with np.load(os.path.join(run, "best.npz"), allow_pickle=False) as z:
        assert z["gru1/weight_ih"].shape == (3 * 32, 32 * 38)
        assert z["gru1/weight_hh_reverse"].shape == (3 * 32, 32)
