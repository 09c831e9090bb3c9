"""A single-label net of two classes may end in one logistic unit and cost.bce (the unit scores the second
class: 0/1 labels). predict, its report, detect and the ONNX model give it one probability per class,
(1 - p, p), as every other net: before, the CSV put P(second class) under the first class's name, predicted
the first class for every case, and --report ended in a traceback."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from tests.audio_fixtures import make_tone_dataset
from tests.helpers import invoke

NET = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 6, filterSize: 3, padding: 1, neuron: relu}
pool1:  {type: pool, inputs: conv1, pool: avg, sizeX: 2}
fc:     {type: fc, inputs: pool1, outputs: 1, neuron: logistic}
bce:    {type: cost.bce, inputs: [labels, fc]}
"""
FEATURES = "sample_rate: 8000\nduration: 0.5\nkind: logmel\nn_fft: 256\nhop: 128\nn_mels: 16\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_unit")
    make_tone_dataset(str(root / "audio"), classes=("low", "high"), per_class=12, seed=3)
    (root / "net.yaml").write_text(NET)
    (root / "params.yaml").write_text("DEFAULT: {updater: adam, epsW: 0.01, epsB: 0.01}\n")
    (root / "f.yaml").write_text(FEATURES)
    r = invoke(["make-batches", str(root / "audio"), str(root / "b"), "--features", str(root / "f.yaml"),
                "--batch-size", "8", "--quiet"])
    assert r.exit_code == 0, r.output
    r = invoke(["train", "--layer-def", str(root / "net.yaml"), "--layer-params", str(root / "params.yaml"),
                "--data-path", str(root / "b"), "--epochs", "12", "--save-path", str(root / "runs"), "--quiet"])
    assert r.exit_code == 0, r.output
    return root, next((root / "runs").iterdir())


def test_predict_gives_both_classes_and_a_report(run):
    root, rdir = run
    out = root / "p.csv"
    r = invoke(["predict", "-f", str(rdir), "--out", str(out), "--report"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert rows and set(rows[0]) == {"filename", "predicted", "high", "low", "true"}
    names = [k for k in rows[0] if k not in ("filename", "predicted", "true")]
    for row in rows:
        p = np.array([float(row[n]) for n in names])
        assert abs(p.sum() - 1.0) < 2e-6
        assert row["predicted"] == names[int(p.argmax())]
    assert {row["predicted"] for row in rows} == {"low", "high"}     # not the first class for every case
    assert "accuracy" in r.output and "confusion matrix" in r.output


def test_the_onnx_model_gives_both_classes_too(run):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    root, rdir = run
    import onnxruntime

    r = invoke(["export", "-f", str(rdir), "--out", str(root / "m.onnx"), "--verify"])
    assert r.exit_code == 0, r.output
    assert "probs (N, 2)" in r.output and "verified with ONNX Runtime" in r.output
    session = onnxruntime.InferenceSession(str(root / "m.onnx"), providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 3 for d in session.get_inputs()[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    probs = session.run(["probs"], {"features": x})[0]
    assert probs.shape == (3, 2)                           # one column per label, as the metadata names them
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
