"""Reading Raven selection tables and CSV tables, pairing them with recordings, clipping (docs/CONFIG.md)."""
from __future__ import annotations

import os

import pytest

from convnet_cli.errors import DataError
from convnet_cli.ingest.annotations import (Selection, assign_to_recordings, clip_to_duration, read_tables,
                                            recording_key, table_stem)
from tests.annotation_fixtures import raven_text, write_csv_table, write_raven

SELS = [(1.0, 2.5, "upcall", 50.0, 250.0), (10.25, 11.0, "gunshot", 20.0, 900.0), (30.0, 31.5, "upcall", 60.0, 240.0)]


def test_raven_table_as_raven_writes_it(tmp_path):
    p = write_raven(str(tmp_path / "rec01.Table.1.selections.txt"), SELS,
                    extra_cols=[("Begin Clock Time", "12:00:01.000"), ("Notes", "checked by AB")])
    raw = open(p, "rb").read()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw          # really BOM + CRLF
    sel = read_tables(p)
    assert [(s.begin, s.end, s.label) for s in sel] == [(b, e, lab) for b, e, lab, _, _ in SELS]
    # one per Selection number (two views each); the spectrogram view's frequency box is kept
    assert [(s.low_freq, s.high_freq) for s in sel] == [(lo, hi) for _, _, _, lo, hi in SELS]
    assert all(s.recording == "rec01" and s.source == p and s.score is None for s in sel)
    assert [s.line for s in sel] == [2, 4, 6]


def test_label_column_choice(tmp_path):
    # Annotation comes before Class in the default order
    text = raven_text([(1, 2, "a", 0, 1)], extra_cols=[("Class", "zzz")])
    p = tmp_path / "r.Table.1.selections.txt"
    p.write_text(text, encoding="utf-8")
    assert read_tables(str(p))[0].label == "a"
    assert read_tables(str(p), label_col="Class")[0].label == "zzz"
    with pytest.raises(DataError, match=r"r\.Table\.1\.selections\.txt line 1: no column 'Clas' .*did you mean "
                                        r"'Class'.*--label-col"):
        read_tables(str(p), label_col="Clas")
    # Species when there is no Annotation; no label column at all -> 'call'
    p2 = write_raven(str(tmp_path / "s.txt"), [(1, 2, "robin", 0, 1)], label_col="Species")
    assert read_tables(p2)[0].label == "robin"
    p3 = write_raven(str(tmp_path / "t.txt"), [(1, 2, "x", 0, 1)], label_col=None)
    assert read_tables(p3)[0].label == "call"


def test_begin_file_begin_path_and_file_offset(tmp_path):
    p = write_raven(str(tmp_path / "all.txt"),
                    [(0.5, 1.0, "a", 0, 1, "rec01.flac"), (3.0, 4.0, "b", 0, 1, "site2/rec02.wav")],
                    file_col="Begin File")
    assert [s.recording for s in read_tables(p)] == ["rec01.flac", "site2/rec02.wav"]
    # Begin Path with a Windows path, and File Offset (s): times within each file of a multi-file table
    text = raven_text([(100.0, 101.5, "a", 0, 1, r"D:\survey\site1\rec01.flac")], file_col="Begin Path",
                      extra_cols=[("File Offset (s)", "12.0")])
    q = tmp_path / "combined.txt"
    q.write_text(text, encoding="utf-8")
    (s,) = read_tables(str(q))
    assert s.recording == "D:/survey/site1/rec01.flac" and (s.begin, s.end) == (12.0, 13.5)


def test_csv_tables(tmp_path):
    p = write_csv_table(str(tmp_path / "ann.csv"), [("site1/rec01.flac", 1.5, 2.0, "upcall", 50, 250),
                                                  ("rec02.flac", 0, 0.75, "noise", "", "")],
                        header=("filename", "start", "end", "label", "low_freq", "high_freq"))
    a, b = read_tables(p)
    assert (a.recording, a.begin, a.end, a.label, a.low_freq, a.high_freq, a.line) == \
        ("site1/rec01.flac", 1.5, 2.0, "upcall", 50.0, 250.0, 2)
    assert (b.low_freq, b.high_freq) == (None, None)
    # detect's detections.csv
    d = write_csv_table(str(tmp_path / "detections.csv"), [("rec01.flac", 4.0, 6.0, "upcall", 0.93)],
                        header=("filename", "begin_s", "end_s", "class", "score"))
    (s,) = read_tables(d)
    assert (s.begin, s.end, s.label, s.score) == (4.0, 6.0, "upcall", 0.93)


def test_folder_of_tables_recursive_and_notes_passed_over(tmp_path):
    write_raven(str(tmp_path / "t" / "site1" / "rec01.Table.1.selections.txt"), SELS[:1])
    write_raven(str(tmp_path / "t" / "rec02.selections.txt"), SELS[1:])
    (tmp_path / "t" / "README.txt").write_text("tables made by AB in March\n")
    (tmp_path / "t" / "skipped.txt").write_text("x.flac\tcannot decode\n")
    sel = read_tables(str(tmp_path / "t"))
    assert sorted((s.recording, s.begin) for s in sel) == [("rec01", 1.0), ("rec02", 10.25), ("rec02", 30.0)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no Raven selection tables"):
        read_tables(str(tmp_path / "empty"))


@pytest.mark.parametrize("case, cell, pattern", [
    ("end_before_begin", ("End Time (s)", "0.5"), r"line 2, column 'End Time \(s\)': end 0.5 s is not after begin 1"),
    ("equal", ("End Time (s)", "1.0"), r"line 2, column 'End Time \(s\)': end 1 s is not after begin 1"),
    ("negative", ("Begin Time (s)", "-1"), r"line 2, column 'Begin Time \(s\)': negative time -1 s"),
    ("text", ("Begin Time (s)", "1,5"), r"line 2, column 'Begin Time \(s\)': begin time '1,5' is not a number"),
    ("empty", ("End Time (s)", ""), r"line 2, column 'End Time \(s\)': end time '\(empty\)' is not a number"),
    ("nan", ("End Time (s)", "nan"), r"line 2, column 'End Time \(s\)': end time 'nan' is not a number"),
])
def test_errors_name_file_line_and_column(tmp_path, case, cell, pattern):
    text = raven_text([(1.0, 2.0, "a", 0, 1)], views=False, crlf=False, bom=False)
    lines = text.splitlines()
    head = lines[0].split("\t")
    row = lines[1].split("\t")
    row[head.index(cell[0])] = cell[1]
    p = tmp_path / "rec.Table.1.selections.txt"
    p.write_text("\n".join([lines[0], "\t".join(row)]) + "\n")
    with pytest.raises(DataError, match=str(p).replace(".", r"\.") + " " + pattern):
        read_tables(str(p))


def test_no_time_columns(tmp_path):
    p = tmp_path / "rec.txt"
    p.write_text("Selection\tView\tAnnotation\n1\tSpectrogram 1\tcall\n")
    with pytest.raises(DataError, match=r"rec\.txt line 1: no time columns: .*lacks 'Begin Time \(s\)' and "
                                        r"'End Time \(s\)'"):
        read_tables(str(p))
    c = write_csv_table(str(tmp_path / "a.csv"), [("r.flac", "1", "call")], header=("filename", "start", "label"))
    with pytest.raises(DataError, match=r"a\.csv line 1: no time columns: .*lacks 'End Time \(s\)'"):
        read_tables(c)
    with pytest.raises(DataError, match="not found"):
        read_tables(str(tmp_path / "nope.txt"))
    # a CSV without a file name column cannot say which recording a row belongs to
    c2 = write_csv_table(str(tmp_path / "b.csv"), [(1, 2, "call")], header=("start", "end", "label"))
    with pytest.raises(DataError, match=r"b\.csv line 1: no file name column"):
        read_tables(c2)


def test_empty_label_is_an_error(tmp_path):
    p = write_raven(str(tmp_path / "r.txt"), [(1, 2, "", 0, 1)], views=False)
    with pytest.raises(DataError, match=r"r\.txt line 2, column 'Annotation': empty label"):
        read_tables(p)


def test_recording_key_and_table_stem():
    assert recording_key("site1/rec01.flac") == "rec01"
    assert recording_key("rec01") == "rec01"
    assert recording_key(r"C:\data\rec01.WAV") == "rec01"
    assert recording_key("20200101.120000.wav") == "20200101.120000"
    assert table_stem("x/rec01.Table.1.selections.txt") == "rec01"
    assert table_stem("rec01.selections.txt") == "rec01"
    assert table_stem("rec01.mine.txt") == "rec01"
    assert table_stem("20200101.120000.Table.1.selections.txt") == "20200101.120000"


def _sel(recording, begin=1.0, source="t.txt", line=2):
    return Selection(recording, begin, begin + 1, "a", source=source, line=line)


def test_assign_to_recordings(tmp_path):
    recs = ["site1/rec01.flac", "site2/rec02.wav", "20200101.120000.flac", "site3/other.flac"]
    sels = [_sel("site1/rec01.flac", 5.0), _sel("rec01.flac", 1.0),                 # path, Begin File
            _sel("D:/survey/site2/rec02.wav"),                                       # Begin Path
            _sel("20200101", source=str(tmp_path / "20200101.120000.Table.1.selections.txt"))]  # dotted stem
    out = assign_to_recordings(sels, str(tmp_path), recs)
    assert sorted(out) == ["20200101.120000.flac", "site1/rec01.flac", "site2/rec02.wav"]
    assert [s.begin for s in out["site1/rec01.flac"]] == [1.0, 5.0]                 # sorted by begin
    with pytest.raises(DataError, match=r"t\.txt line 7: recording 'rec09\.flac' is not in .*add the recording"):
        assign_to_recordings([_sel("rec09.flac", line=7)], str(tmp_path), recs)


def test_same_name_in_two_folders(tmp_path):
    recs = ["site1/rec01.flac", "site2/rec01.flac"]
    with pytest.raises(DataError, match="could be any of site1/rec01.flac, site2/rec01.flac"):
        assign_to_recordings([_sel("rec01.flac")], str(tmp_path), recs)
    # a table kept in a folder named like the recording's folder pairs with that one
    src = str(tmp_path / "tables" / "site2" / "rec01.Table.1.selections.txt")
    out = assign_to_recordings([_sel("rec01", source=src)], str(tmp_path), recs)
    assert list(out) == ["site2/rec01.flac"]


def test_clip_to_duration_warns():
    warnings = []
    sels = [_sel("r", 1.0), Selection("r", 9.5, 12.0, "a", source="t.txt", line=3),
            Selection("r", 10.0, 11.0, "a", source="t.txt", line=4)]
    out = clip_to_duration(sels, 10.0, warnings.append)
    assert [(s.begin, s.end) for s in out] == [(1.0, 2.0), (9.5, 10.0)]
    assert len(warnings) == 2
    assert warnings[0].startswith("t.txt line 3:") and "clipped to 10.000 s" in warnings[0]
    assert warnings[1].startswith("t.txt line 4:") and "left out" in warnings[1]


def test_latin1_table(tmp_path):
    p = tmp_path / "r.txt"
    p.write_bytes(raven_text([(1, 2, "Grünling", 0, 1)], bom=False).encode("cp1252"))
    assert read_tables(str(p))[0].label == "Grünling"
    assert os.path.exists(p)
