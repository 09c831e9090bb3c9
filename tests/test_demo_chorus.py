"""`convnet demo --chorus` (convnet_cli/demo_chorus.py) in small: the synthetic chorus and its annotations,
the overlapping pairs, the single-label twin of the starter net, and the whole run (make-batches
--multi-label, train with cost.bce, detect, evaluate; beside it the single-label twin) on two short
recordings, printing per-class AP and the pairs both found."""
from __future__ import annotations

import os

import yaml

from convnet_cli import demo_chorus
from convnet_cli.demo import config_path


def test_recordings_hold_overlapping_calls_of_different_types(tmp_path):
    made = demo_chorus.make_chorus_recordings(str(tmp_path), n_train=1, n_heldout=1, seed=2, seconds=30)
    assert made["calls"] > 10 and made["overlapping"] > 2
    rec, ann = made["train"]
    assert os.listdir(rec) == ["chorus01.flac"] and os.listdir(ann) == ["chorus01.Table.1.selections.txt"]
    head = open(os.path.join(ann, "chorus01.Table.1.selections.txt")).readline().split("\t")
    assert "Begin Time (s)" in head and "Species" in [h.strip() for h in head]


def test_overlapping_pairs_are_of_different_labels_that_sound_at_once():
    calls = [(0.0, 1.0, "a"), (0.5, 1.5, "b"), (0.6, 0.9, "a"), (2.0, 3.0, "c"), (3.0, 4.0, "a")]
    # (0, 2) share a label; (3, 4) only touch
    assert demo_chorus.overlapping_pairs(calls) == [(0, 1), (1, 2)]


def test_the_single_label_twin_is_the_starter_net_with_a_softmax_and_a_background_class():
    text = open(config_path("chorus.yaml")).read()
    multi, single = yaml.safe_load(text), yaml.safe_load(demo_chorus.single_label_twin(text))
    assert multi["fc"]["neuron"] == "logistic" and multi["bce"]["type"] == "cost.bce"
    assert multi["bce"]["inputs"] == ["labels", "fc"]
    assert "neuron" not in single["fc"] and single["fc"]["outputs"] == multi["fc"]["outputs"] + 1
    assert single["logprob"] == {"type": "cost.logreg", "inputs": ["labels", "probs"]} and "bce" not in single
    assert {k: v for k, v in single.items() if k not in ("fc", "probs", "logprob")} == \
           {k: v for k, v in multi.items() if k not in ("fc", "bce")}


def test_the_starter_configs_build_and_fit_the_chorus_features():
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.net import Net

    spec = FeatureSpec.from_file(config_path("chorus-features.yaml"), {})
    assert spec.sample_rate == demo_chorus.SR
    shape = (1, 48, 1 + (spec.sample_rate * 1 - 256) // 64)
    net = Net.from_files(config_path("chorus.yaml"), config_path("chorus-params.yaml"), shape)
    assert net.fused_neuron == {"bce": "fc"}  # the fc's logistic outputs: BCE on the logits
    net.check_data(list(demo_chorus.CALL_TYPES), True)
    twin = Net.from_text(demo_chorus.single_label_twin(open(config_path("chorus.yaml")).read()),
                         open(config_path("chorus-params.yaml")).read(), shape)
    twin.check_data(["background"] + list(demo_chorus.CALL_TYPES), False)


def test_the_chorus_demo_runs_end_to_end_in_small(tmp_path, capsys):
    rc = demo_chorus.main(str(tmp_path / "chorus"), 3, "cpu", 0, True, n_train=2, n_heldout=1, seconds=40)
    assert rc == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    head = next(i for i, l in enumerate(lines) if l.split() == ["multi-label", "single-label"])
    table = {l[:12].strip(): l[12:].split() for l in lines[head + 1:head + 9]}
    assert set(table) == set(demo_chorus.CALL_TYPES) | {"overall AP", "recall", "precision", "pairs found"}
    for c in demo_chorus.CALL_TYPES:
        assert len(table[c]) == 2
    found = [tuple(int(v) for v in cell.split("/")) for cell in table["pairs found"]]
    assert found[0][1] == found[1][1] > 0 and all(0 <= f <= n for f, n in found)
    # the multi-label run made multi-label batches and trained by mAP; the twin single-label ones by cost
    from convnet_cli.train.checkpoint import read_state

    runs = {tag: os.path.join(tmp_path, "chorus", f"runs-{tag}") for tag in ("multi", "single")}
    states = {tag: read_state(os.path.join(d, os.listdir(d)[0], "best.npz")) for tag, d in runs.items()}
    assert states["multi"]["multi_label"] is True and states["multi"]["options"]["best_by"] == "map"
    assert states["single"]["multi_label"] is False and states["single"]["options"]["best_by"] == "cost"
    assert states["multi"]["label_names"] == list(demo_chorus.CALL_TYPES)
    tables = os.listdir(os.path.join(tmp_path, "chorus", "detections-multi"))
    assert any(t.endswith(".selections.txt") for t in tables)
