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


# ---- issue 23: tables that lost annotations or read wrongly -------------------------------------------

def _table(tmp_path, rows, header=("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                                   "Low Freq (Hz)", "High Freq (Hz)", "Annotation"), name="rec.Table.1.selections.txt",
           crlf=True):
    """A table of raw rows (lists of cells, or a str line) as Raven writes them (tab-separated)."""
    nl = "\r\n" if crlf else "\n"
    lines = ["\t".join(header)] + [r if isinstance(r, str) else "\t".join(str(c) for c in r) for r in rows]
    p = tmp_path / name
    p.write_bytes((nl.join(lines) + nl).encode("utf-8"))
    return str(p)


def test_multi_file_table_whose_selection_numbers_restart_per_file(tmp_path):
    # Raven's multi-file tables number the selections of each Begin File from 1: 3 files x 4 calls x 2 views
    sels = [(1.0 + k, 1.5 + k, "upcall", 50, 250, f"rec{f}.flac") for f in range(3) for k in range(4)]
    text = raven_text(sels, file_col="Begin File")
    head, *rows = text.lstrip("\ufeff").split("\r\n")[:-1]
    renumbered = []
    for i, row in enumerate(rows):
        cells = row.split("\t")
        cells[0] = str(i // 2 % 4 + 1)                   # 1..4 in each file
        renumbered.append("\t".join(cells))
    p = tmp_path / "survey.txt"
    p.write_text("\r\n".join([head] + renumbered) + "\r\n", encoding="utf-8")
    warnings = []
    got = read_tables(str(p), warn=warnings.append)
    assert sorted((s.recording, s.begin) for s in got) == sorted((f, b) for b, _, _, _, _, f in sels)
    assert all((s.low_freq, s.high_freq) == (50.0, 250.0) for s in got)   # the spectrogram view's box
    assert warnings == []


def test_repeated_selection_number_with_other_times_keeps_both_and_warns(tmp_path):
    p = _table(tmp_path, [[1, "Spectrogram 1", 1, "1.0", "2.0", 50, 250, "a"],
                          [2, "Spectrogram 1", 1, "3.0", "4.0", 50, 250, "a"],
                          [2, "Spectrogram 1", 1, "7.0", "8.0", 50, 250, "b"],
                          [2, "Waveform 1", 1, "7.0", "8.0", 0, 1000, "b"]])
    warnings = []
    got = read_tables(p, warn=warnings.append)
    assert [(s.begin, s.label, s.line) for s in got] == [(1.0, "a", 2), (3.0, "a", 3), (7.0, "b", 4)]
    assert got[2].high_freq == 250.0
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{p} lines 3 and 4: Selection 2") and "both kept" in warnings[0]


def test_two_views_of_one_selection_with_other_labels_keep_the_first_and_warn(tmp_path):
    """The views of a selection share its annotation: two labels for one Selection number, file and times is a
    true conflict, named by its lines (the issue's rule: deduplicate by Selection, begin, end and file)."""
    p = _table(tmp_path, [[1, "Spectrogram 1", 1, "1.0", "2.0", 50, 250, "NOCA"],
                          [1, "Waveform 1", 1, "1.0", "2.0", 0, 1000, "WOTH"],
                          [2, "Spectrogram 1", 1, "3.0", "4.0", 50, 250, "EATO"],
                          [2, "Waveform 1", 1, "3.0", "4.0", 0, 1000, "EATO"]])
    warnings = []
    got = read_tables(p, warn=warnings.append)
    assert [(s.begin, s.label) for s in got] == [(1.0, "NOCA"), (3.0, "EATO")]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{p} lines 2 and 3: Selection 1") and "'NOCA' and 'WOTH'" in warnings[0]
    assert "kept 'NOCA'" in warnings[0]


@pytest.mark.parametrize("cell", ["1_0", "inf", "-inf", "+nan", "1e400", " 1", "1 ", "\u0661\u0660", "0x10",
                                  "1.0\x0c", "\uff11", "Infinity"])
def test_times_are_plain_decimals(tmp_path, cell):
    p = _table(tmp_path, [[1, "Spectrogram 1", 1, cell, "20.0", 50, 250, "a"]])
    with pytest.raises(DataError, match=str(p).replace(".", r"\.") + r" line 2, column 'Begin Time \(s\)': begin "
                                                                      r"time .* is not a number of seconds"):
        read_tables(p)
    q = _table(tmp_path, [[1, "Spectrogram 1", 1, "1.0", "2.0", cell, 250, "a"]], name="q.txt")
    with pytest.raises(DataError, match=r"q\.txt line 2, column 'Low Freq \(Hz\)': .* is not a number"):
        read_tables(q)


def test_plain_decimals_still_read(tmp_path):
    p = _table(tmp_path, [[1, "Spectrogram 1", 1, "+1.5", "2.", 50, 250, "a"],
                          [2, "Spectrogram 1", 1, ".5", "1.5e1", "", "", "a"]])
    assert [(s.begin, s.end) for s in read_tables(p)] == [(1.5, 2.0), (0.5, 15.0)]


def test_file_offset_errors_name_the_offset_column(tmp_path):
    header = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Begin File", "File Offset (s)",
              "Annotation")
    for value, said in (("-3", "negative"), ("1_0", "not a number")):
        p = _table(tmp_path, [[1, "Spectrogram 1", 1, "100.0", "101.0", "rec.flac", value, "a"]], header=header)
        with pytest.raises(DataError, match=r"line 2, column 'File Offset \(s\)': .*" + said):
            read_tables(p)


def test_huge_times_in_messages_are_short():
    warnings = []
    out = clip_to_duration([Selection("r", 1e300, 2e300, "a", source="t.txt", line=3)], 10.0, warnings.append)
    assert out == [] and len(warnings) == 1
    assert "1e+300" in warnings[0] and len(warnings[0]) < 200


def test_one_non_utf8_line_leaves_the_others_utf8(tmp_path):
    p = tmp_path / "rec.Table.1.selections.txt"
    good = raven_text([(1, 2, "béluga", 0, 1), (3, 4, "béluga", 0, 1)], views=False, bom=False)
    lines = good.split("\r\n")
    raw = "\r\n".join(lines[:2]).encode("utf-8") + b"\r\n" + lines[2].encode("cp1252") + b"\r\n"
    p.write_bytes(raw)
    warnings = []
    got = read_tables(str(p), warn=warnings.append)
    assert [s.label for s in got] == ["béluga", "béluga"]
    assert len(warnings) == 1 and warnings[0].startswith(f"{p} line 3: not UTF-8")
    assert "Windows-1252" in warnings[0]


def test_line_numbers_count_only_real_line_ends(tmp_path):
    # U+2028, NEL and form feed are not line ends for an editor, and a label cannot hold them
    for ch, name in (("\u2028", "a line separator"), ("\x85", "a line break"), ("\x0c", "a form feed"),
                     ("\x07", r"U\+0007")):
        p = _table(tmp_path, [[1, "Spectrogram 1", 1, "1.0", "2.0", 50, 250, "a"],
                              [2, "Spectrogram 1", 1, "3.0", "4.0", 50, 250, f"b{ch}c"],
                              [3, "Spectrogram 1", 1, "5.0", "6.0", 50, 250, "d"]])
        with pytest.raises(DataError, match=r"selections\.txt line 3, column 'Annotation': the label .* holds "
                                            + name):
            read_tables(p)


def test_tab_inside_a_label(tmp_path):
    # in a tab-separated table the tab splits the label: the row then has more cells than the header
    p = _table(tmp_path, [[1, "Spectrogram 1", 1, "1.0", "2.0", 50, 250, "wood\tthrush"]])
    with pytest.raises(DataError, match=r"line 2: 9 tab-separated cells, the header has 8"):
        read_tables(p)
    # a trailing empty cell is harmless
    q = _table(tmp_path, [[1, "Spectrogram 1", 1, "1.0", "2.0", 50, 250, "a", ""]], name="q.txt")
    assert read_tables(q)[0].label == "a"
    # in a CSV a quoted label can hold a tab or a line break: refused, naming the line the row starts on
    c = tmp_path / "ann.csv"
    c.write_text('filename,start,end,label\nrec.flac,1,2,a\nrec.flac,3,4,"wood\tthrush"\n'
                 'rec.flac,5,6,"two\nlines"\nrec.flac,7,8,b\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"ann\.csv line 3, column 'label': the label 'wood\\tthrush' holds a tab"):
        read_tables(str(c))
    c.write_text('filename,start,end,label\nrec.flac,1,2,a\nrec.flac,5,6,"two\nlines"\nrec.flac,7,8,b\n',
                 encoding="utf-8")
    with pytest.raises(DataError, match=r"ann\.csv line 3, column 'label': the label 'two\\nlines' holds a line "
                                        r"break"):
        read_tables(str(c))
    # an unterminated quote would swallow every row after it
    c.write_text('filename,start,end,label\nrec.flac,1,2,"a\nrec.flac,3,4,b\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"ann\.csv line 2, column 'label'"):
        read_tables(str(c))


def test_csv_line_numbers_after_a_quoted_field_over_two_lines(tmp_path):
    c = tmp_path / "ann.csv"
    c.write_text('filename,start,end,label,notes\nrec.flac,1,2,a,"seen\ntwice"\nrec.flac,4,3,b,\n',
                 encoding="utf-8")
    with pytest.raises(DataError, match=r"ann\.csv line 4, column 'end': end 3 s is not after begin 4"):
        read_tables(str(c))


def test_no_label_column_but_text_columns_warns_once(tmp_path):
    p = write_raven(str(tmp_path / "rec.Table.1.selections.txt"), SELS, label_col=None,
                    extra_cols=[("Begin Clock Time", "06:00:01.000"), ("Sp", "upcall"), ("Notes", "checked")])
    warnings = []
    got = read_tables(p, warn=warnings.append)
    assert {s.label for s in got} == {"call"}
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{p}: no label column") and "'Sp', 'Notes'" in warnings[0]
    assert "--label-col" in warnings[0] and "Clock" not in warnings[0]
    # numbers only (Raven's measurements): nothing to say
    q = write_raven(str(tmp_path / "q.txt"), SELS, label_col=None)
    warnings.clear()
    read_tables(q, warn=warnings.append)
    assert warnings == []


def test_a_folder_of_tables_without_a_label_column_warns_once_for_all(tmp_path):
    folder = tmp_path / "survey"
    folder.mkdir()
    for k in range(5):
        write_raven(str(folder / f"site{k}.Table.1.selections.txt"), SELS, label_col=None,
                    extra_cols=[("Sp", "WOTH"), ("Notes", "dawn")] if k != 2 else [("Observer", "AB")])
    warnings = []
    got = read_tables(str(folder), warn=warnings.append)
    assert {s.label for s in got} == {"call"} and len(got) == 5 * len(SELS)
    assert len(warnings) == 1, warnings
    w = warnings[0]
    assert w.startswith(f"{folder} (site0.Table.1.selections.txt the first): 5 tables have no label column")
    assert "'Sp', 'Notes', 'Observer'" in w and "--label-col" in w


def test_only_regular_files_are_tables(tmp_path):
    import threading

    fifo = tmp_path / "rec.Table.1.selections.txt"
    os.mkfifo(fifo)
    got = []

    def read():
        try:
            read_tables(str(fifo))
        except DataError as exc:
            got.append(str(exc))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():           # the old reader blocks in open(); a writer lets it go
        with open(fifo, "w"):
            pass
        t.join(10)
        pytest.fail("reading a FIFO as a table blocked")
    assert got and got[0].startswith(f"{fifo}: is a FIFO") and "--annotations" in got[0]
    with pytest.raises(DataError, match="is a FIFO"):        # in a folder of tables too
        read_tables(str(tmp_path))
    if os.path.exists("/dev/zero"):      # endless: the old reader filled the memory
        with pytest.raises(DataError, match=r"/dev/zero: is a character device, not a file"):
            read_tables("/dev/zero")


def test_table_size_and_line_length_are_bounded(tmp_path, monkeypatch):
    from convnet_cli.ingest import annotations

    p = _table(tmp_path, [[1, "Spectrogram 1", 1, "1.0", "2.0", 50, 250, "x" * (2 ** 20 + 10)]])
    with pytest.raises(DataError, match=r"selections\.txt line 2: longer than 1 MB"):
        read_tables(p)
    monkeypatch.setattr(annotations, "MAX_TABLE_BYTES", 1000)
    q = _table(tmp_path, [[k, "Spectrogram 1", 1, k, k + 0.5, 50, 250, "a"] for k in range(1, 100)], name="q.txt")
    with pytest.raises(DataError, match=r"q\.txt: larger than .*; not an annotation table"):
        read_tables(q)


def test_labels_csv_of_clips_refuses_a_line_break_in_a_label(tmp_path):
    from convnet_cli.ingest.sources import collect_dataset
    import numpy as np

    from tests.audio_fixtures import write_clip

    (tmp_path / "clips").mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        write_clip(str(tmp_path / "clips" / name), np.zeros(800, np.float32), 8000)
    c = tmp_path / "labels.csv"
    c.write_text('clip_name,label\na.wav,x\nb.wav,"y\nz"\nc.wav,x\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"labels\.csv line 3, column 'label': the label 'y\\nz' holds a line break"):
        collect_dataset(str(tmp_path / "clips"), str(c))
    c.write_text('clip_name,notes,label\na.wav,"two\nlines",x\nb.wav,,y\nb.wav,,x\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"labels\.csv line 5: 'b\.wav' is listed again \(first on line 4\)"):
        collect_dataset(str(tmp_path / "clips"), str(c))


def test_an_empty_table_with_a_begin_file_column_claims_its_recording_by_its_name(tmp_path):
    """Raven writes `Begin File` into an empty table too: with no selection to name a file, the table is its
    file name's recording's (annotated, no call), as the same table without that column is."""
    from convnet_cli.ingest.annotations import read_tables_and_claims

    header = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tBegin File\t" \
             "File Offset (s)\tSpecies\n"
    (tmp_path / "b.Table.1.selections.txt").write_text(header, encoding="utf-8")
    sels, claims = read_tables_and_claims(str(tmp_path / "b.Table.1.selections.txt"))
    assert sels == [] and [c.recording for c in claims] == ["b"]
    (tmp_path / "v.selections.txt").write_text(header.replace("Species\n", "Species\tVerdict\n"), encoding="utf-8")
    assert read_tables_and_claims(str(tmp_path / "v.selections.txt"))[1] == []   # a review's table claims nothing


def test_a_raven_table_with_delta_time_and_no_end_time(tmp_path):
    """Raven's measurement chooser may leave out `End Time (s)` and keep `Delta Time (s)`: end = begin + delta."""
    p = tmp_path / "r.Table.1.selections.txt"
    p.write_text("Selection\tView\tChannel\tBegin Time (s)\tDelta Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\n"
                 "1\tSpectrogram 1\t1\t1.250\t0.500\t100\t900\tNOCA\n"
                 "2\tSpectrogram 1\t1\t3.000\t2.000\t100\t900\tEATO\n", encoding="utf-8")
    assert [(s.begin, s.end, s.label) for s in read_tables(str(p))] == [(1.25, 1.75, "NOCA"), (3.0, 5.0, "EATO")]
    p.write_text("Selection\tBegin Time (s)\tDelta Time (s)\tSpecies\n1\t2.0\t0\tNOCA\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2, column 'Delta Time \(s\)': end 2 s is not after begin 2 s"):
        read_tables(str(p))
    p.write_text("Selection\tBegin Time (s)\tSpecies\n1\t2.0\tNOCA\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"lacks 'End Time \(s\)'"):
        read_tables(str(p))
