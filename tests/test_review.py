"""convnet review (docs/REVIEW.md): the sample, clips and listening copies, spectrogram PNGs, review.csv, the
verdict files, resume, reviewed precision, and verified labels feeding make-batches --annotations.

The page itself, in a real browser, is tested in tests/test_review_page.py."""
from __future__ import annotations

import csv
import json
import os
import struct
import zlib

import numpy as np
import pytest

from convnet_cli.errors import DataError
from convnet_cli.ingest.annotations import Selection, read_tables
from convnet_cli.ingest.features import FeatureSpec
from convnet_cli.ingest.recordings import Recording, plan_windows
from tests.annotation_fixtures import write_raven, write_recording
from tests.helpers import invoke

# ---- verified labels in make-batches (SPEC 18) -----------------------------------------------------

WIN = FeatureSpec.from_dict({"sample_rate": 1000, "duration": 1.0, "n_fft": 128, "hop": 50, "n_mels": 16})


def _plan(selections, **kw):
    rec = Recording("a.wav", "/x/a.wav", 20.0, 1000, selections)
    plan = plan_windows([rec], WIN, 1.0, **kw)
    return {int(w): plan.label_names[int(c)] for w, c in zip(plan.win, plan.labels)}, plan


def _sel(b, e, verdict=None, label="tone"):
    return Selection("a.wav", b, e, label, verdict=verdict)


def test_verified_false_is_background_that_background_ratio_never_drops():
    sels = [_sel(2, 3, "true"), _sel(5, 6, "false"), _sel(8, 9, "unsure"), _sel(12, 13)]   # 12-13: no verdict
    got, plan = _plan(sels, background_ratio=0.0)
    # ratio 0 draws no background window, but the verified negative stays; the unsure window is left out
    assert got == {2: "tone", 5: "background", 12: "tone"}
    got, _ = _plan(sels)
    assert got[5] == "background" and 8 not in got and got[2] == got[12] == "tone"
    assert len(got) == 19                     # every window but the unsure one: the recording is annotated whole


def test_hard_negatives_count_towards_the_background_ratio():
    sels = [_sel(2, 3, "true"), _sel(12, 13, "true"), _sel(5, 6, "false"), _sel(15, 16)]
    got, plan = _plan(sels, background_ratio=1.0, seed=3)
    bg = sorted(w for w, c in got.items() if c == "background")
    assert len(bg) == 3 and 5 in bg           # 3 class windows: 3 background, the verified negative one of them


def test_a_recording_labelled_only_by_verdicts_keeps_only_the_reviewed_windows():
    # a verdict table is a sample of detections, not an annotation of the whole recording: the windows no
    # verdict covers are unknown, not background
    got, plan = _plan([_sel(2, 3, "true"), _sel(5, 6, "false"), _sel(8, 9, "unsure")])
    assert got == {2: "tone", 5: "background"}
    assert plan.left_out == 1 and plan.not_reviewed == 17


def test_verdict_column_is_read_from_raven_tables_and_csv(tmp_path):
    t = tmp_path / "v.selections.txt"
    t.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tBegin File\tClass\tScore\tVerdict\n"
                 "1\tSpectrogram 1\t1\t1.0\t2.0\ta.wav\ttone\t0.9\ttrue\n"
                 "2\tSpectrogram 1\t1\t3.0\t4.0\ta.wav\ttone\t0.8\tFALSE\n"
                 "3\tSpectrogram 1\t1\t5.0\t6.0\ta.wav\ttone\t0.7\tunsure\n"
                 "4\tSpectrogram 1\t1\t7.0\t8.0\ta.wav\ttone\t0.6\t\n", encoding="utf-8")
    assert [s.verdict for s in read_tables(str(t))] == ["true", "false", "unsure", "unsure"]
    c = tmp_path / "v.csv"
    c.write_text("filename,start,end,label,verdict\na.wav,1,2,tone,true\na.wav,3,4,tone,false\n")
    assert [s.verdict for s in read_tables(str(c))] == ["true", "false"]
    plain = tmp_path / "p.csv"
    plain.write_text("filename,start,end,label\na.wav,1,2,tone\n")
    assert [s.verdict for s in read_tables(str(plain))] == [None]
    t.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tClass\tVerdict\n1\t1\t2\ttone\tmaybe\n")
    with pytest.raises(DataError, match=r"line 2, column 'Verdict': 'maybe' is not a verdict; use true, false"):
        read_tables(str(t))


def test_make_batches_with_a_verdict_table(tmp_path):
    rec = tmp_path / "rec"
    write_recording(str(rec / "a.wav"), 20.0, sr=1000, calls=[(2.0, 3.0, 200.0), (12.0, 13.0, 200.0)])
    (tmp_path / "tables").mkdir()
    write_raven(str(tmp_path / "tables" / "a.Table.1.selections.txt"),
                [(2.0, 3.0, "tone", 100, 300), (12.0, 13.0, "tone", 100, 300)], label_col="Class")
    v = tmp_path / "tables" / "verdicts.selections.txt"
    v.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tBegin File\t"
                 "Begin Path\tClass\tScore\tVerdict\n"
                 f"1\tSpectrogram 1\t1\t5.000\t6.000\t0.0\t500.0\ta.wav\t{rec / 'a.wav'}\ttone\t0.9000\tfalse\n"
                 f"2\tSpectrogram 1\t1\t8.000\t9.000\t0.0\t500.0\ta.wav\t{rec / 'a.wav'}\ttone\t0.8000\tunsure\n")
    feats = tmp_path / "f.yaml"
    feats.write_text("sample_rate: 1000\nduration: 1.0\nn_fft: 128\nhop: 50\nn_mels: 16\n")
    out = tmp_path / "b"
    r = invoke(["make-batches", str(rec), str(out), "--annotations", str(tmp_path / "tables"), "--features",
                str(feats), "--window-hop", "1", "--background-ratio", "0", "--test-fraction", "0", "--jobs", "1",
                "--quiet"])
    assert r.exit_code == 0, r.output
    from convnet_cli.data.batch_files import META, restricted_load

    meta = restricted_load(str(out / META))
    names = []
    for b in range(1, meta["num_batches"] + 1):
        d = restricted_load(str(out / f"data_batch_{b}"))
        names += [(n, meta["label_names"][lab]) for n, lab in zip(d["filenames"], d["labels"])]
    assert sorted(names) == [("a.wav@12.000", "tone"), ("a.wav@2.000", "tone"), ("a.wav@5.000", "background")]
