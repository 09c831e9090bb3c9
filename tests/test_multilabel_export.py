"""export of a multi-label network (SPEC 17): `probs` are the logistic outputs, one per class (not a softmax),
the metadata says multi_label, and ONNX Runtime gives predict's probabilities on synthesised audio."""
import json

import numpy as np
import pytest

from tests.helpers import invoke
from tests.multilabel_detector import FEATURES, two_tone_checkpoint, write_recording

onnx = pytest.importorskip("onnx", reason="export needs the onnx package (the export extra)")


def _props(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_multilabel_export_matches_predict_in_onnx_runtime(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the parity check runs the model in ONNX Runtime")
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.make_batches import features_for_files

    ck = two_tone_checkpoint(tmp_path / "ck.npz")
    model = tmp_path / "m.onnx"
    r = invoke(["export", "-f", ck, "--out", str(model), "--verify"])
    assert r.exit_code == 0, r.output
    assert "one logistic output per class (multi-label)" in r.output and "verified with ONNX Runtime" in r.output
    props = _props(model)
    assert props["multi_label"] == "true" and json.loads(props["label_names"]) == ["high", "low"]
    clips = tmp_path / "clips"
    paths = [write_recording(clips / f"{name}.wav", 1.0, calls, seed=i) for i, (name, calls) in enumerate([
        ("both", [(0, 1, "low"), (0, 1, "high")]), ("low", [(0, 1, "low")]), ("high", [(0, 1, "high")]),
        ("none", [])])]
    out = tmp_path / "p.csv"
    assert invoke(["predict", "-f", ck, *paths, "--out", str(out)]).exit_code == 0
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    ours = np.array([[float(v) for v in row[2:4]] for row in rows])
    feats, ok, bad = features_for_files(paths, FeatureSpec.from_dict(FEATURES), jobs=1)
    assert not bad and len(ok) == 4
    theirs = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        ["probs"], {"features": np.asarray(feats, np.float32)})[0]
    assert np.abs(theirs - ours).max() < 1e-4
    # logistic outputs: both classes near 1 for the clip with both tones, so a row does not sum to 1
    assert theirs[0].min() > 0.9 and theirs[3].max() < 0.1
    assert [row[1] for row in rows] == ["high;low", "low", "high", ""]


def test_single_label_export_says_multi_label_false(tmp_path):
    from tests.detect_fixtures import tone_checkpoint

    ck = tone_checkpoint(tmp_path / "ck.npz")
    assert invoke(["export", "-f", ck, "--out", str(tmp_path / "m.onnx")]).exit_code == 0
    assert _props(tmp_path / "m.onnx")["multi_label"] == "false"
