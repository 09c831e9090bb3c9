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
