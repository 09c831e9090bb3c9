"""make-batches --annotations end to end (docs/CONFIG.md): synthesised recordings with calls at known times, Raven
tables as Raven writes them, hand-computed window labels, the split by recording, errors, and the batches
working with train, predict --data-path and show unchanged."""
from __future__ import annotations

import os

import numpy as np

import pytest

from convnet_cli.data.skipped_list import parse_skipped

from convnet_cli.data.batch_files import META, restricted_load
from convnet_cli.errors import ConfigError
from convnet_cli.ingest.audio import read_audio
from convnet_cli.ingest.features import FeatureSpec, compute_features
from convnet_cli.ingest.recordings import split_by_group
from tests.annotation_fixtures import write_csv_table, write_raven, write_recording
from tests.helpers import invoke

FEATURES = ("sample_rate: 2000\nduration: 2.0\nkind: logmel\nn_fft: 256\nhop: 100\nn_mels: 16\nfmin: 20\nfmax: 600\n"
            "normalize: pixel\n")

# recording A (12 s, windows of 2 s every 1 s: starts 0..10) and the labels worked out by hand
A_SELECTIONS = [
    (2.5, 3.5, "upcall", 50, 250),     # w1 [1,3) .5 of the call, w2 all, w3 [3,5) .5
    (7.2, 7.6, "gunshot", 400, 800),   # inside w6 [6,8) and w7 [7,9)
    (9.7, 10.5, "upcall", 50, 250),    # w8 .3/.8 < .5: ambiguous; w9 all; w10 .5/.8
    (4.9, 5.1, "gunshot", 400, 800),   # w3 .1/.2 = .5, but upcall overlaps w3 more; w4 all; w5 .1/.2
    (11.5, 13.0, "upcall", 50, 250),   # past the end (12 s): clipped to 11.5-12.0, w10 .5/.5
]
A_EXPECTED = {0: "background", 1: "upcall", 2: "upcall", 3: "upcall", 4: "gunshot", 5: "gunshot", 6: "gunshot",
              7: "gunshot", 9: "upcall", 10: "upcall"}      # 8 left out
B_EXPECTED = {0: "upcall", 1: "upcall", **{k: "background" for k in range(2, 11)}}


def _calls(selections):
    return [(b, min(e, 12.0), 200.0 if lab == "upcall" else 600.0) for b, e, lab, _, _ in selections]


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    root = tmp_path_factory.mktemp("survey")
    rec, tables = root / "rec", root / "tables"
    write_recording(str(rec / "site0" / "recA.flac"), 12.0, calls=_calls(A_SELECTIONS), seed=1)
    write_recording(str(rec / "site1" / "recB.flac"), 12.0, calls=[(1.0, 2.0, 200.0)], seed=2)
    write_recording(str(rec / "site1" / "recC.flac"), 12.0, seed=3)
    write_recording(str(rec / "site2" / "recD.flac"), 12.0, seed=4)
    write_raven(str(tables / "recA.Table.1.selections.txt"), A_SELECTIONS,
                extra_cols=[("Begin Clock Time", "06:00:00.000"), ("Notes", "")])
    write_raven(str(tables / "recC.Table.1.selections.txt"), [])                 # annotated, no call in it
    write_raven(str(tables / "more" / "combined.txt"), [(1.0, 2.0, "upcall", 50, 250, "recB.flac")],
                file_col="Begin File")
    (root / "features.yaml").write_text(FEATURES)
    return root


def run(root, out, *extra, tables=None):
    return invoke(["make-batches", str(root / "rec"), str(out), "--annotations", str(tables or root / "tables"),
                   "--features", str(root / "features.yaml"), "--window-hop", "1", "--jobs", "1", "--quiet", *extra])


def cases(batch_dir):
    meta = restricted_load(os.path.join(batch_dir, META))
    out = {}
    for b in range(1, meta["num_batches"] + 1):
        d = restricted_load(os.path.join(batch_dir, f"data_batch_{b}"))
        for j, (name, lab) in enumerate(zip(d["filenames"], d["labels"])):
            out[name] = (meta["label_names"][lab], b, d["data"][:, j])
    return meta, out


def test_hand_computed_windows(survey, tmp_path):
    r = run(survey, tmp_path / "b", "--test-fraction", "0", "--batch-size", "7")
    assert r.exit_code == 0, r.output
    # the selection past the end of recA is clipped, with a warning naming the table and line
    assert "recA.Table.1.selections.txt line 10: selection 11.500-13.000 s ends after the end of" in r.output
    assert "clipped to 12.000 s" in r.output
    assert "3 recordings read" in r.output and "1 ambiguous left out" in r.output
    meta, got = cases(tmp_path / "b")
    expected = {f"site0/recA.flac@{k:.3f}": v for k, v in A_EXPECTED.items()}
    expected.update({f"site1/recB.flac@{k:.3f}": v for k, v in B_EXPECTED.items()})
    expected.update({f"site1/recC.flac@{k:.3f}": "background" for k in range(11)})
    assert {n: v[0] for n, v in got.items()} == expected
    assert meta["label_names"] == ["background", "gunshot", "upcall"]
    assert meta["window"] == {"duration": 2.0, "hop": 1.0} and meta["features"]["duration"] == 2.0
    assert meta["features"]["window_hop"] == 1.0   # SPEC 11: features also holds window_hop
    assert meta["num_batches"] == 5 and max(meta["batch_cases"]) <= 7 and meta["skipped"] == 1
    with open(tmp_path / "b" / "skipped.txt") as f:
        assert f.read() == "file,reason\nsite2/recD.flac,no annotation table names this recording\n"
    # a window's features are those of the same stretch cut out as a clip
    spec = FeatureSpec.from_dict(meta["features"])
    x, sr = read_audio(str(survey / "rec" / "site0" / "recA.flac"))
    for start in (3, 6, 10):
        clip = x[start * sr:(start + 2) * sr][None]
        ref = compute_features(clip, spec, np).reshape(-1)
        np.testing.assert_allclose(got[f"site0/recA.flac@{start:.3f}"][2], ref, atol=1e-5)


def test_csv_tables_and_label_col(survey, tmp_path):
    t = write_csv_table(str(tmp_path / "ann.csv"),
                        [("site0/recA.flac", b, e, lab, "x") for b, e, lab, _, _ in A_SELECTIONS]
                        + [("site1/recB.flac", 1.0, 2.0, "upcall", "x")],
                        header=("filename", "start", "end", "species", "observer"))
    r = run(survey, tmp_path / "b", "--test-fraction", "0", tables=t)
    assert r.exit_code == 0, r.output
    _, got = cases(tmp_path / "b")
    assert {n: v[0] for n, v in got.items() if n.startswith("site0/recA")} == \
        {f"site0/recA.flac@{k:.3f}": v for k, v in A_EXPECTED.items()}
    assert not any(n.startswith("site1/recC") for n in got)          # no table names it in this CSV
    r = run(survey, tmp_path / "c", "--test-fraction", "0", "--label-col", "observer", "--overwrite", tables=t)
    assert r.exit_code == 0, r.output
    assert restricted_load(str(tmp_path / "c" / META))["label_names"] == ["background", "x"]


def test_split_by_recording_and_background_ratio(survey, tmp_path):
    r = run(survey, tmp_path / "b", "--test-fraction", "0.3", "--batch-size", "10", "--background-ratio", "1",
            "--seed", "3")
    assert r.exit_code == 0, r.output
    meta, got = cases(tmp_path / "b")
    train, test = meta["train_range"], meta["test_range"]
    assert train and test
    side = {}
    for name, (_, b, _) in got.items():
        rec = name.split("@")[0]
        side.setdefault(rec, set()).add(train[0] <= b <= train[1])
    assert all(len(s) == 1 for s in side.values()), side             # no recording on both sides
    counts = {c: sum(v[0] == c for v in got.values()) for c in meta["label_names"]}
    assert counts["background"] <= counts["upcall"] + counts["gunshot"]
    # the same seed draws the same background windows; the training statistics are of the training range
    r2 = run(survey, tmp_path / "b2", "--test-fraction", "0.3", "--batch-size", "10", "--background-ratio", "1",
             "--seed", "3")
    assert r2.exit_code == 0
    assert set(cases(tmp_path / "b2")[1]) == set(got)
    train_cols = np.stack([v[2] for v in got.values() if train[0] <= v[1] <= train[1]])
    np.testing.assert_allclose(meta["data_mean"][:, 0], train_cols.mean(axis=0), rtol=1e-4, atol=1e-4)


def test_split_by_group_is_stratified():
    # 6 recordings: class 1 only in recordings 0 and 3, class 2 only in recording 5
    groups = np.repeat(np.arange(6), 10)
    labels = np.zeros(60, dtype=np.int64)
    labels[0:3] = 1
    labels[30:34] = 1
    labels[50:52] = 2
    for seed in range(10):
        test = split_by_group(groups, labels, 0.3, seed)
        for g in range(6):
            assert len(set(test[groups == g])) == 1
        assert set(labels[test]) >= {0, 1} and set(labels[~test]) >= {0, 1, 2}   # 2: only one recording
        assert 10 <= test.sum() <= 30
    with pytest.raises(ConfigError, match="every window comes from one recording"):
        split_by_group(np.zeros(5), np.zeros(5), 0.2, 0)
    assert not split_by_group(np.zeros(5), np.zeros(5), 0.0, 0).any()


def test_jobs_in_parallel_give_the_same_batches(survey, tmp_path):
    assert run(survey, tmp_path / "one", "--test-fraction", "0").exit_code == 0
    r = invoke(["make-batches", str(survey / "rec"), str(tmp_path / "two"), "--annotations", str(survey / "tables"),
                "--features", str(survey / "features.yaml"), "--window-hop", "1", "--jobs", "2", "--quiet",
                "--test-fraction", "0"])
    assert r.exit_code == 0, r.output
    _, one = cases(tmp_path / "one")
    _, two = cases(tmp_path / "two")
    assert set(one) == set(two)
    for name in one:
        np.testing.assert_array_equal(one[name][2], two[name][2])


def test_unreadable_recordings_are_skipped(survey, tmp_path):
    root = tmp_path / "s"
    (root / "rec").mkdir(parents=True)
    write_recording(str(root / "rec" / "good.flac"), 6.0, seed=5)
    (root / "rec" / "bad.flac").write_text("not audio at all\n" * 50)
    (root / "features.yaml").write_text(FEATURES)
    write_raven(str(root / "tables" / "good.Table.1.selections.txt"), [(1.0, 2.0, "upcall", 0, 1)])
    write_raven(str(root / "tables" / "bad.Table.1.selections.txt"), [(1.0, 2.0, "upcall", 0, 1)])
    write_recording(str(root / "rec" / "short.flac"), 1.5, seed=6)
    write_raven(str(root / "tables" / "short.Table.1.selections.txt"), [(0.5, 1.0, "upcall", 0, 1)])
    r = run(root, tmp_path / "b", "--test-fraction", "0")
    assert r.exit_code == 0, r.output
    skipped = dict(parse_skipped((tmp_path / "b" / "skipped.txt").read_text()))
    assert skipped["bad.flac"].startswith("cannot decode")
    assert skipped["short.flac"] == "shorter (1.500 s) than one window (2 s)"
    os.remove(root / "rec" / "good.flac")
    (root / "rec" / "good.flac").write_bytes(b"")
    r = run(root, tmp_path / "c", "--test-fraction", "0")
    assert r.exit_code == 1 and "none of the 3 recordings could be used" in r.output
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("extra, tables, message", [
    ((), "missing", "recording 'recZ' is not in"),
    ((), "bad_time", "line 2, column 'End Time (s)': end 1 s is not after begin 2"),
    (("--labels", "x.csv"), None, "--labels does not apply with --annotations"),
    (("--min-overlap", "1.5"), None, "--min-overlap 1.5: must be between 0 and 1"),
    (("--window-hop", "0"), None, "--window-hop 0.0: must be a positive number"),
    (("--background-ratio", "-1"), None, "--background-ratio -1.0: must be 0 or more"),
    (("--label-names", "upcall,gunshot"), None, "label 'background' is not one of the label names"),
    (("--test-fraction", "0.2"), "one", "every window comes from one recording"),
])
def test_user_errors_exit_2(survey, tmp_path, extra, tables, message):
    t = None
    if tables == "missing":
        t = write_raven(str(tmp_path / "recZ.Table.1.selections.txt"), [(1.0, 2.0, "a", 0, 1)])
    elif tables == "bad_time":
        t = write_raven(str(tmp_path / "recA.Table.1.selections.txt"), [(2.0, 1.0, "a", 0, 1)], views=False)
    elif tables == "one":
        t = write_raven(str(tmp_path / "recA.Table.1.selections.txt"), A_SELECTIONS)
    r = run(survey, tmp_path / "b", *extra, tables=t)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "b").exists()


def test_window_flags_need_annotations(survey, tmp_path):
    r = invoke(["make-batches", str(survey / "rec"), str(tmp_path / "b"), "--window-hop", "1", "--quiet"])
    assert r.exit_code == 2 and "--window-hop applies to long recordings with --annotations" in r.output


def test_window_hop_in_features_is_not_a_feature_key():
    spec = FeatureSpec.from_dict({"sample_rate": 2000, "duration": 2.0, "window_hop": 1.0})
    assert spec.sample_rate == 2000 and "window_hop" not in spec.to_dict()


LAYERS = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 4, filterSize: 3, padding: 1, init: kaiming_normal, neuron: relu}
pool1:  {type: pool, inputs: conv1, pool: max, sizeX: 2}
fc2:    {type: fc, inputs: pool1, outputs: 3, init: glorot_uniform}
probs:  {type: softmax, inputs: fc2}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""


def test_train_predict_show_work_on_window_batches(survey, tmp_path):
    assert run(survey, tmp_path / "b", "--test-fraction", "0.3", "--batch-size", "12").exit_code == 0
    (tmp_path / "layers.yaml").write_text(LAYERS)
    (tmp_path / "params.yaml").write_text("DEFAULT: {updater: adam, epsW: 0.003, epsB: 0.003}\n")
    r = invoke(["train", "--data-path", str(tmp_path / "b"), "--save-path", str(tmp_path / "runs"), "--layer-def",
                str(tmp_path / "layers.yaml"), "--layer-params", str(tmp_path / "params.yaml"), "--epochs", "1",
                "--mini", "8", "--quiet"])
    assert r.exit_code == 0, r.output
    run_dir = str(tmp_path / "runs" / os.listdir(tmp_path / "runs")[0])
    r = invoke(["predict", "-f", run_dir, "--data-path", str(tmp_path / "b"), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0].startswith("filename,predicted,background,gunshot,upcall")
    assert any(ln.startswith(("site0/recA.flac@", "site1/rec")) for ln in lines[1:])
    r = invoke(["show", "-f", run_dir, "--cost", "--preds", "probs"])
    assert r.exit_code == 0, r.output
    assert os.path.exists(os.path.join(run_dir, "cost.png"))


# ---- issue 23 ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chorus(tmp_path_factory):
    """A dawn chorus: WOTH always inside a longer NOCA (so it never wins a window), EATO only past the end."""
    root = tmp_path_factory.mktemp("chorus")
    write_recording(str(root / "rec" / "dawn.flac"), 12.0, calls=[(2.0, 6.0, 200.0), (3.0, 4.0, 600.0)], seed=7)
    write_raven(str(root / "tables" / "dawn.Table.1.selections.txt"),
                [(2.0, 6.0, "NOCA", 50, 250), (3.0, 4.0, "WOTH", 500, 700), (20.0, 21.0, "EATO", 50, 250)])
    (root / "features.yaml").write_text(FEATURES)
    return root


def test_every_label_of_the_tables_is_a_class(chorus, tmp_path):
    r = run(chorus, tmp_path / "b", "--test-fraction", "0")
    assert r.exit_code == 0, r.output
    meta = restricted_load(str(tmp_path / "b" / META))
    assert meta["label_names"] == ["background", "EATO", "NOCA", "WOTH"]
    assert meta["windows"]["counts"] == {"background": 6, "EATO": 0, "NOCA": 5, "WOTH": 0}
    assert "(background 6, EATO 0, NOCA 5, WOTH 0;" in r.output
    assert "warning: 2 classes have no window (EATO, WOTH)" in r.output
    # --label-names fixes the set and its order; a name no table uses is a class of 0 windows
    r = run(chorus, tmp_path / "c", "--test-fraction", "0", "--label-names", "background,WOTH,NOCA,EATO,BCCH")
    assert r.exit_code == 0, r.output
    meta = restricted_load(str(tmp_path / "c" / META))
    assert meta["label_names"] == ["background", "WOTH", "NOCA", "EATO", "BCCH"]
    assert meta["windows"]["counts"]["BCCH"] == 0 and meta["windows"]["counts"]["NOCA"] == 5


@pytest.mark.parametrize("names, message", [
    ("background,NOCA,EATO", "dawn.Table.1.selections.txt line 4: label 'WOTH' is not one of the label names"),
    ("background,NOCA,WOTH,NOCA,EATO", "--label-names background,NOCA,WOTH,NOCA,EATO: give each name once"),
    ("background,,NOCA,WOTH,EATO", "--label-names background,,NOCA,WOTH,EATO: give each name once"),
])
def test_label_names_must_hold_every_label_of_the_tables(chorus, tmp_path, names, message):
    r = run(chorus, tmp_path / "b", "--test-fraction", "0", "--label-names", names)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


def test_multi_file_table_pairs_every_recording(tmp_path):
    root = tmp_path / "s"
    sels = []
    for f in range(3):
        write_recording(str(root / "rec" / f"r{f}.flac"), 6.0, calls=[(1.0, 2.0, 200.0), (4.0, 5.0, 200.0)], seed=f)
        sels += [(1.0, 2.0, "upcall", 50, 250, f"r{f}.flac"), (4.0, 5.0, "upcall", 50, 250, f"r{f}.flac")]
    from tests.annotation_fixtures import raven_text

    head, *rows = raven_text(sels, file_col="Begin File").lstrip("\ufeff").split("\r\n")[:-1]
    rows = ["\t".join([str(i // 2 % 2 + 1)] + row.split("\t")[1:]) for i, row in enumerate(rows)]  # 1, 2 per file
    (root / "tables").mkdir()
    (root / "tables" / "survey.txt").write_text("\r\n".join([head] + rows) + "\r\n", encoding="utf-8")
    (root / "features.yaml").write_text(FEATURES)
    r = run(root, tmp_path / "b", "--test-fraction", "0")
    assert r.exit_code == 0, r.output
    assert "3 recordings read" in r.output and "0 skipped" in r.output
    meta = restricted_load(str(tmp_path / "b" / META))
    assert meta["windows"]["counts"]["upcall"] == 3 * 4


def test_fifo_as_annotations_is_refused(survey, tmp_path):
    fifo = tmp_path / "tables.txt"
    os.mkfifo(fifo)
    import threading

    out = []
    t = threading.Thread(target=lambda: out.append(run(survey, tmp_path / "b", tables=fifo)), daemon=True)
    t.start()
    t.join(120)
    if t.is_alive():
        with open(fifo, "w"):
            pass
        t.join(30)
        pytest.fail("make-batches --annotations FIFO blocked")
    r = out[0]
    assert r.exit_code == 2, r.output
    assert f"{fifo}: is a FIFO (named pipe), not a file" in r.output and "Traceback" not in r.output
