"""make-batches --annotations --multi-label (SPEC 17) through the CLI: every window's targets follow the rule
(present where an annotation of the class covers --min-overlap of the shorter of window and call, unknown
where the class only touches the window, absent elsewhere), overlapping calls of two classes give windows
holding both, and batches.meta says the set is multi-label."""
from __future__ import annotations

import numpy as np

from tests.multilabel_detector import CALLS_A, CALLS_B, LABELS, batch_truth, make_multilabel_batches

WINDOW = 1.0
UNKNOWN = 255


def expected(name):
    rec, start = name.split("@")
    b0 = float(start)
    b1 = b0 + WINDOW
    calls = CALLS_A if rec == "a.wav" else CALLS_B
    row = []
    for c in LABELS:
        cover, touched = 0.0, False
        for b, e, label in calls:
            if label != c:
                continue
            ov = max(0.0, min(e, b1) - max(b, b0))
            touched |= ov > 0
            cover = max(cover, ov / min(WINDOW, e - b))
        row.append(1 if cover >= 0.5 else (UNKNOWN if touched else 0))
    return row


def test_every_window_holds_the_classes_the_rule_gives(tmp_path):
    batches = make_multilabel_batches(tmp_path)
    bs, names, truth = batch_truth(batches)
    assert list(bs.label_names) == LABELS
    assert len(names) == len(set(names)) > 40
    for name, row in zip(names, truth.tolist()):
        assert row == expected(name), name
    rows = [tuple(r) for r in truth.tolist()]
    assert rows.count((1, 1)) >= 5             # the overlapping low and high calls: both present at once
    assert (0, UNKNOWN) in rows                # the low call covering 0.3 s of a window: unknown, not absent
    # every window with a present class is a case; a window that none touches is absent for both
    starts = {n for n in names}
    for rec, calls, length in (("a.wav", CALLS_A, 22), ("b.wav", CALLS_B, 12)):
        for b0 in np.arange(0.0, length - WINDOW + 1e-9, 0.5):
            name = f"{rec}@{b0:.3f}"
            if 1 in expected(name):
                assert name in starts, name


def test_clips_labelled_by_one_0_1_column_per_class(tmp_path):
    """The other clip layout of SPEC 17 (OpenSoundscape's): `file,<class>,...` with 1 present, 0 absent and an
    empty cell unknown; the same targets as the ';'-separated labels column, and the header's class order."""
    import csv

    from convnet_cli.data.batch_files import BatchSet
    from tests.helpers import invoke
    from tests.multilabel_fixtures import CLASSES, make_multilabel_clips

    sets = make_multilabel_clips(str(tmp_path), n=24, seed=3)
    order = ["mid", "low", "high"]                     # not sorted: the header's order is the classes' order
    unknown = {"clip004.wav": "low", "clip011.wav": "high"}
    with open(tmp_path / "columns.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file"] + order)
        for name, present in sets.items():
            w.writerow([name] + ["" if unknown.get(name) == c else int(c in present) for c in order])
    for csv_name, out in (("labels.csv", "by_labels"), ("columns.csv", "by_columns")):
        r = invoke(["make-batches", str(tmp_path / "clips"), str(tmp_path / out), "--labels", str(tmp_path / csv_name),
                    "--multi-label", "--features", str(tmp_path / "features.yaml"), "--batch-size", "30",
                    "--test-fraction", "0", "--jobs", "1", "--quiet"])
        assert r.exit_code == 0, r.output
    got = {}
    for out in ("by_labels", "by_columns"):
        bs = BatchSet(str(tmp_path / out))
        assert bs.multi_label
        rows = {}
        for b in bs.batch_numbers:
            _, _, t, names = bs.read_batch(b)
            rows.update({n.split("/")[-1]: list(m) for n, m in zip(names, t.matrix.tolist())})
        got[out] = (list(bs.label_names), rows)
    assert got["by_labels"][0] == sorted(CLASSES) and got["by_columns"][0] == order
    labels_names, by_labels = got["by_labels"]
    for name, row in got["by_columns"][1].items():
        want = [by_labels[name][labels_names.index(c)] for c in order]
        if name in unknown:
            want[order.index(unknown[name])] = UNKNOWN
        assert row == want, name
