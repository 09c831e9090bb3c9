"""Window probabilities -> events (convnet_cli/detect/events.py) and the tables detect writes (raven.py)."""
import csv
import os

import numpy as np
import pytest

from convnet_cli.detect import raven
from convnet_cli.detect.events import Event, events_for_class, reported_classes, windows_to_events
from convnet_cli.errors import ConfigError
from convnet_cli.thresholds import parse_thresholds


def test_runs_of_windows_become_events_with_first_start_last_end_and_max_score():
    starts = np.arange(10) * 1.0  # 2-s windows every second
    p = np.array([0.1, 0.6, 0.9, 0.7, 0.2, 0.1, 0.55, 0.3, 0.8, 0.1])
    ev = events_for_class(starts, p, 2.0, 0.5, 0.0, "upcall")
    assert [(e.begin, e.end) for e in ev] == [(1.0, 5.0), (6.0, 8.0), (8.0, 10.0)]
    assert [e.score for e in ev] == pytest.approx([0.9, 0.55, 0.8])


def test_merge_gap_joins_events_closer_than_it():
    starts = np.arange(10) * 2.0  # 2-s windows, no overlap: window k covers [2k, 2k+2)
    p = np.zeros(10)
    p[[1, 3, 7]] = 0.9  # gaps: 1->3 is 2 s, 3->7 is 6 s
    assert len(events_for_class(starts, p, 2.0, 0.5, 0.0, "c")) == 3
    ev = events_for_class(starts, p, 2.0, 0.5, 2.5, "c")
    assert [(e.begin, e.end) for e in ev] == [(2.0, 8.0), (14.0, 16.0)]
    ev = events_for_class(starts, p, 2.0, 0.5, 6.5, "c")
    assert [(e.begin, e.end) for e in ev] == [(2.0, 16.0)]


def test_overlapping_windows_with_a_dip_between_are_one_event():
    starts = np.arange(6) * 0.5  # 2-s windows every 0.5 s
    p = np.array([0.9, 0.2, 0.9, 0.0, 0.0, 0.0])
    assert [(e.begin, e.end) for e in events_for_class(starts, p, 2.0, 0.5, 0.0, "c")] == [(0.0, 3.0)]


def test_per_class_thresholds_and_background_left_out():
    names = ["background", "upcall", "gunshot"]
    assert reported_classes(names) == ["upcall", "gunshot"]
    assert reported_classes(names, "gunshot") == ["gunshot"]
    th = parse_thresholds("upcall=0.8", names)
    assert th == {"background": 0.5, "upcall": 0.8, "gunshot": 0.5}
    assert parse_thresholds("0.3,gunshot=0.9", names)["upcall"] == 0.3
    starts = np.arange(3) * 2.0
    probs = np.array([[0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.95, 0.02, 0.03]])
    ev = windows_to_events(starts, probs, names, 2.0, th, reported_classes(names))
    # upcall's 0.7 is under its 0.8; gunshot's 0.6 passes 0.5; the background window is never reported
    assert ev == [Event(2.0, 4.0, "gunshot", pytest.approx(0.6))]


@pytest.mark.parametrize("text,word", [("upcal=0.5", "did you mean 'upcall'"), ("1.5", "outside 0..1"),
                                       ("abc", "not a number")])
def test_bad_thresholds_name_the_problem(text, word):
    with pytest.raises(ConfigError, match=word):
        parse_thresholds(text, ["noise", "upcall"])


def test_bad_classes_and_all_background():
    with pytest.raises(ConfigError, match="did you mean 'upcall'"):
        reported_classes(["noise", "upcall"], "upcal")
    with pytest.raises(ConfigError, match="--classes"):
        reported_classes(["noise", "background"])


def test_table_names_join_folders_only_when_stems_clash():
    names = raven.table_names(["site1/rec01.flac", "site2/rec01.flac", "site2/rec02.wav", "detections.wav"])
    assert names == {"site1/rec01.flac": "site1__rec01.selections.txt",
                     "site2/rec01.flac": "site2__rec01.selections.txt",
                     "site2/rec02.wav": "rec02.selections.txt",
                     "detections.wav": "detections__rec.selections.txt"}


def test_raven_table_layout_is_exact(tmp_path):
    path = raven.write_table(str(tmp_path / "rec.selections.txt"), [Event(1.0, 3.5, "upcall", 0.91234)],
                             "rec.flac", 20.0, 600.0)
    lines = open(path, encoding="utf-8").read().split("\n")
    assert lines[0] == ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\t"
                        "Begin File\tClass\tScore")
    assert lines[1] == "1\tSpectrogram 1\t1\t1.000\t3.500\t20.0\t600.0\trec.flac\tupcall\t0.9123"
    assert lines[2] == ""
    assert raven.read_own_table(path) == [(1.0, 3.5, "upcall", 0.9123)]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_combined_table_counts_file_sequence_time(tmp_path):
    path = raven.write_combined_table(str(tmp_path / raven.COMBINED_NAME), [
        ("/d/a.wav", 60.0, [(1.0, 2.0, "upcall", 0.9)]),
        ("/d/b.wav", 30.0, []),
        ("/d/c.wav", 10.0, [(5.0, 7.0, "upcall", 0.8)])], 0.0, 1000.0)
    rows = list(csv.reader(open(path, encoding="utf-8"), delimiter="\t"))
    assert rows[0] == list(raven.COMBINED_HEADER)
    h = {k: i for i, k in enumerate(rows[0])}
    assert [r[h["Begin Time (s)"]] for r in rows[1:]] == ["1.000", "95.000"]
    assert [r[h["File Offset (s)"]] for r in rows[1:]] == ["1.000", "5.000"]
    assert [r[h["Begin Path"]] for r in rows[1:]] == ["/d/a.wav", "/d/c.wav"]
    assert [r[h["Selection"]] for r in rows[1:]] == ["1", "2"]


def test_detections_and_scores_csv(tmp_path):
    p = raven.write_detections_csv(str(tmp_path / "detections.csv"),
                                   [("s/a.wav", [(1.0, 3.0, "upcall", 0.75)]), ("b.wav", [])])
    assert open(p).read() == "filename,begin_s,end_s,class,score\ns/a.wav,1.000,3.000,upcall,0.7500\n"
    part = tmp_path / "part"
    part.write_text(raven.scores_text("b.wav", [0.0, 1.0], 2.0, np.array([[0.25, 0.75], [0.5, 0.5]])))
    s = raven.write_scores_csv(str(tmp_path / "scores.csv"), ["noise", "upcall"], [("b.wav", str(part))])
    assert open(s).read() == ("filename,begin_s,end_s,noise,upcall\nb.wav,0.000,2.000,0.250000,0.750000\n"
                              "b.wav,1.000,3.000,0.500000,0.500000\n")
