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


def _multi_plan(selections, whole=False, **kw):
    from convnet_cli.ingest.recordings import plan_multilabel_windows

    rec = Recording("a.wav", "/x/a.wav", 20.0, 1000, selections, whole=whole)
    plan = plan_multilabel_windows([rec], WIN, 1.0, **kw)
    return {int(w): tuple(int(v) for v in row) for w, row in zip(plan.win, plan.multi.matrix)}, plan


def test_multilabel_verdicts_leave_the_classes_nobody_reviewed_unknown():
    """A recording known only through verdicts: in a reviewed window, the class of the verdict is present
    (true) or absent (false); a class no verdict of its own covers there is unknown (255), not absent."""
    sels = [Selection("a.wav", 2, 3, "high", verdict="true"), Selection("a.wav", 5, 6, "low", verdict="false"),
            Selection("a.wav", 8, 9, "low", verdict="unsure")]
    got, plan = _multi_plan(sels)            # classes (high, low)
    assert plan.label_names == ["high", "low"]
    assert got == {2: (1, 255), 5: (255, 0)}
    assert plan.not_reviewed == 18
    # a recording an ordinary table also names is annotated whole: the other classes are absent there
    got, _ = _multi_plan(sels, whole=True)
    assert got[2] == (1, 0) and got[5] == (0, 0) and got[8] == (0, 255)
    assert got[12] == (0, 0)


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


def test_a_recording_known_only_by_verdicts_always_trains(tmp_path):
    """Its windows are a sample around detections: a test range of them would choose best.npz on windows
    unlike those detect meets (measured: benchmarks/bench_verified_negatives.py), so it stays in training."""
    from convnet_cli.data.batch_files import BatchSet

    rec = tmp_path / "rec"
    tables = tmp_path / "tables"
    tables.mkdir()
    for k in range(3):   # three annotated recordings
        write_recording(str(rec / f"a{k}.wav"), 12.0, sr=1000, calls=[(2.0, 3.0, 200.0)], seed=k)
        write_raven(str(tables / f"a{k}.Table.1.selections.txt"), [(2.0, 3.0, "tone", 100, 300)], label_col="Class")
    write_recording(str(rec / "rev.wav"), 12.0, sr=1000, calls=[(4.0, 5.0, 200.0)], seed=9)
    (tables / "verdicts.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tBegin File\t"
        "Begin Path\tClass\tScore\tVerdict\n"
        f"1\tSpectrogram 1\t1\t4.000\t5.000\t0.0\t500.0\trev.wav\t{rec / 'rev.wav'}\ttone\t0.9000\ttrue\n"
        f"2\tSpectrogram 1\t1\t8.000\t9.000\t0.0\t500.0\trev.wav\t{rec / 'rev.wav'}\ttone\t0.8000\tfalse\n")
    feats = tmp_path / "f.yaml"
    feats.write_text("sample_rate: 1000\nduration: 1.0\nn_fft: 128\nhop: 50\nn_mels: 16\n")
    for seed in range(6):
        out = tmp_path / f"b{seed}"
        r = invoke(["make-batches", str(rec), str(out), "--annotations", str(tables), "--features", str(feats),
                    "--window-hop", "1", "--test-fraction", "0.5", "--seed", str(seed), "--jobs", "1", "--quiet"])
        assert r.exit_code == 0, r.output
        bs = BatchSet(out)
        test_names = [n for b in bs.test_range for n in bs.load_batch(b)[2]]
        assert test_names and not any(n.startswith("rev.wav@") for n in test_names)


# ---- the sample -------------------------------------------------------------------------------------

from convnet_cli.errors import ConfigError  # noqa: E402
from convnet_cli.review import sample as smp  # noqa: E402
from convnet_cli.review.media import listening_copy, listening_rate  # noqa: E402
from tests.review_fixtures import detect_dir  # noqa: E402


def _dets(label, scores, rec="r.wav"):
    return [smp.Detection(rec, float(i), float(i) + 0.5, label, float(s)) for i, s in enumerate(scores)]


def test_top_takes_the_highest_scores_per_class():
    dets = _dets("a", [0.5, 0.9, 0.7, 0.95, 0.6]) + _dets("b", [0.8, 0.3])
    got, bins = smp.draw(dets, ["a", "b"], 3, "top", 0)
    assert [(d.label, d.score) for d in got] == [("a", 0.95), ("a", 0.9), ("a", 0.7), ("b", 0.8), ("b", 0.3)]
    assert bins == {}
    got, _ = smp.draw(dets, ["b"], 3, "top", 0)        # --classes b: only b
    assert {d.label for d in got} == {"b"}


def test_random_is_seeded_per_class_and_independent_of_the_other_classes():
    rng = np.random.default_rng(5)
    dets = _dets("a", rng.uniform(0.5, 1, 200)) + _dets("b", rng.uniform(0.5, 1, 40), rec="s.wav")
    one, _ = smp.draw(dets, ["a", "b"], 10, "random", 7)
    again, _ = smp.draw(list(reversed(dets)), ["a", "b"], 10, "random", 7)     # the reading order does not matter
    other, _ = smp.draw(dets, ["a", "b"], 10, "random", 8)
    only_a, _ = smp.draw(dets, ["a"], 10, "random", 7)
    assert one == again and one != other
    assert [d for d in one if d.label == "a"] == only_a
    assert sum(d.label == "a" for d in one) == sum(d.label == "b" for d in one) == 10
    assert len(set(one)) == 20
    s = [d.score for d in one if d.label == "a"]
    assert s == sorted(s, reverse=True)                                          # each class by falling score


def test_stratified_spreads_the_sample_over_equal_width_score_bins():
    # 10 bins of width 0.05 between 0.5 and 1.0; quotas of 1 each, what empty bins cannot take goes to the
    # others round-robin from the top
    assert smp.stratified_counts([3, 0, 0, 1, 0, 0, 0, 0, 0, 50], 10) == [3, 0, 0, 1, 0, 0, 0, 0, 0, 6]
    assert smp.stratified_counts([10] * 10, 25) == [2, 2, 2, 2, 2, 3, 3, 3, 3, 3]
    assert smp.stratified_counts([1, 2], 50) == [1, 2]
    scores = [0.5, 0.51, 0.52, 0.66] + list(np.linspace(0.951, 1.0, 50))
    got, bins = smp.draw(_dets("a", scores), ["a"], 10, "stratified", 1)
    assert len(got) == 10
    assert bins["a"]["detections"] == [3, 0, 0, 1, 0, 0, 0, 0, 0, 50]
    assert np.allclose(bins["a"]["edges"], np.linspace(0.5, 1.0, 11))
    which = smp.bin_of([d.score for d in got], bins["a"]["edges"])
    assert np.bincount(which, minlength=10).tolist() == [3, 0, 0, 1, 0, 0, 0, 0, 0, 6]
    again, _ = smp.draw(_dets("a", scores), ["a"], 10, "stratified", 1)
    assert got == again
    # fewer bins than 10 when N is smaller; one bin when every score is equal
    assert len(smp.draw(_dets("a", scores), ["a"], 4, "stratified", 1)[1]["a"]["edges"]) == 5
    assert smp.draw(_dets("a", [0.7] * 5), ["a"], 3, "stratified", 1)[1]["a"]["detections"] == [5]


def test_unknown_class_is_refused_with_a_hint():
    with pytest.raises(ConfigError, match=r"--classes: no detections of class 'upcal' \(did you mean 'upcall'\?\)"):
        smp.choose_classes(_dets("upcall", [0.9]), "upcal", None)


# ---- listening copies ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sr, slowed, rate", [(2000, 1, 16000), (16000, 1, 16000), (250000, 10, 32000),
                                              (44100, 1, 44100), (10000, 1, 11025), (96000, 10, 11025),
                                              (384000, 10, 44100), (768000, 10, 48000), (48000, 1, 48000)])
def test_listening_rate_rule(sr, slowed, rate):
    assert listening_rate(sr) == (slowed, rate)


@pytest.mark.parametrize("sr, seconds_heard, rate", [(2000, 1.0, 16000), (16000, 1.0, 16000), (250000, 10.0, 32000)])
def test_listening_copy_keeps_the_sound_and_slows_ultrasound(sr, seconds_heard, rate):
    t = np.arange(sr) / sr
    x = (0.01 * np.sin(2 * np.pi * (sr / 8) * t)).astype(np.float32)     # 1 s at an eighth of the rate
    y, r, slowed = listening_copy(x, sr)
    assert r == rate and abs(len(y) - seconds_heard * rate) <= 2
    assert abs(float(np.abs(y).max()) - 10 ** (-1 / 20)) < 0.02           # a faint clip is brought up to -1 dBFS
    spec = np.abs(np.fft.rfft(y[len(y) // 4: 3 * len(y) // 4]))
    peak_hz = np.argmax(spec) * rate / (len(y) // 2)
    assert abs(peak_hz - sr / 8 / slowed) < 0.01 * sr / 8 / slowed        # slowed 10x: a tenth of the pitch


# ---- review end to end ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def detected(tmp_path_factory):
    return detect_dir(tmp_path_factory.mktemp("review"))


def _csv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _png_size(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    at, idat = 8, b""
    while at < len(data):
        n, tag = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + n]
        assert struct.unpack(">I", data[at + 8 + n:at + 12 + n])[0] == zlib.crc32(tag + body) & 0xFFFFFFFF
        idat += body if tag == b"IDAT" else b""
        at += 12 + n
    assert len(zlib.decompress(idat)) == h * (w + 1) and depth == 8 and ctype == 3
    return w, h


def test_review_writes_clips_at_the_recordings_rate_with_context_clipped_at_the_ends(detected, tmp_path):
    import soundfile as sf

    rec, det = detected
    out = tmp_path / "review"
    r = invoke(["review", str(det), "--out", str(out), "--no-serve", "--select", "top", "--context", "1"])
    assert r.exit_code == 0, r.output
    rows = _csv(out / "review.csv")
    assert list(rows[0])[:8] == ["id", "recording", "begin_s", "end_s", "class", "score", "clip", "image"]
    assert [int(x["id"]) for x in rows] == list(range(1, 7))
    media = json.loads((out / "media.json").read_text())
    by = {(x["recording"], x["begin_s"]): x for x in rows}
    expect = {("a.wav", "3.000"): (2000, 2.0, 6.0, 16000, 1), ("b.wav", "0.000"): (16000, 0.0, 2.5, 16000, 1),
              ("b.wav", "9.000"): (16000, 8.0, 12.0, 16000, 1), ("c.wav", "2.000"): (250000, 1.0, 4.0, 32000, 10)}
    for key, (sr, c0, c1, lrate, slowed) in expect.items():
        row = by[key]
        info = sf.info(str(out / row["clip"]))
        assert info.samplerate == sr and abs(info.frames - (c1 - c0) * sr) <= 1, key
        m = media[row["id"]]
        assert (m["clip_begin"], m["clip_end"], m["listen_rate"], m["slowed"]) == (c0, c1, lrate, slowed)
        assert sf.info(str(out / m["listen"])).samplerate == lrate
        assert _png_size(out / row["image"]) == (900, 256)
    assert media[by[("b.wav", "0.000")]["id"]]["at_start"] and media[by[("b.wav", "9.000")]["id"]]["at_end"]
    # the clip's samples are the recording's own
    row = by[("a.wav", "3.000")]
    x, _ = sf.read(str(out / row["clip"]))
    full, _ = sf.read(str(rec / "a.wav"))
    assert np.allclose(x, full[4000:12000], atol=1e-4)
    html = (out / "index.html").read_text()
    assert "http://" not in html and "https://" not in html and "//cdn" not in html


def test_a_clip_decodes_only_its_stretch(tmp_path, monkeypatch):
    from convnet_cli.ingest import windows
    from convnet_cli.review.media import cut_clip

    path = write_recording(str(tmp_path / "long.wav"), 600.0, sr=2000)
    spans = []
    real = windows.RecordingReader._decode

    def spy(self, a, b):
        spans.append(b - a)
        return real(self, a, b)

    monkeypatch.setattr(windows.RecordingReader, "_decode", spy)
    x, facts = cut_clip(path, 300.0, 301.0, 1.0)
    assert len(x) == 6000 and sum(spans) == 6000      # 3 s of a 10-minute recording


def test_a_long_event_keeps_the_start_of_its_clip(tmp_path, monkeypatch):
    from convnet_cli.review import media

    monkeypatch.setattr(media, "MAX_CLIP_S", 5.0)
    path = write_recording(str(tmp_path / "long.wav"), 60.0, sr=2000)
    x, facts = media.cut_clip(path, 10.0, 40.0, 1.0)
    assert len(x) == 10000 and (facts["clip_begin"], facts["clip_end"], facts["truncated"]) == (9.0, 14.0, True)


def test_verdict_files_are_a_raven_table_and_a_csv_that_read_back(detected, tmp_path):
    from convnet_cli.review.build import prepare
    from convnet_cli.review.verdicts import read_verdicts

    _, det = detected
    review = prepare(str(det), str(tmp_path / "rv"), select="top", progress=False, echo=lambda m: None)
    store = review.store
    store.record(1, "true")
    store.record(3, "false")
    store.record(2, "unsure")
    store.record(3, "true")                      # a verdict changed
    assert read_verdicts(review.review_dir, review.items) == {1: "true", 2: "unsure", 3: "true"}
    rows = _csv(tmp_path / "rv" / "verdicts.csv")
    assert list(rows[0]) == ["id", "recording", "begin_s", "end_s", "class", "score", "channel", "verdict"]
    assert {r["channel"] for r in rows} == {""}   # a mixed run: no channel of its own
    assert [(r["id"], r["verdict"]) for r in rows] == [("1", "true"), ("2", "unsure"), ("3", "true")]
    table = read_tables(str(tmp_path / "rv" / "verdicts.selections.txt"))
    items = {it.id: it for it in review.items}
    assert [(s.recording, s.begin, s.end, s.label, s.verdict) for s in table] == [
        (items[i].path, items[i].begin, items[i].end, "tone", v) for i, v in ((1, "true"), (2, "unsure"), (3, "true"))]
    assert all(s.score is not None and s.low_freq == 50.0 and s.high_freq == 450.0 for s in table)
    header = (tmp_path / "rv" / "verdicts.selections.txt").read_text().splitlines()[0].split("\t")
    assert header == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                      "High Freq (Hz)", "Begin File", "Begin Path", "Class", "Score", "Verdict"]
    assert [s.verdict for s in read_tables(str(tmp_path / "rv" / "verdicts.csv"))] == ["true", "unsure", "true"]


def test_a_second_run_resumes_and_keeps_its_sample(detected, tmp_path):
    from convnet_cli.review.verdicts import VERDICTS_TABLE

    _, det = detected
    out = tmp_path / "rv"
    r = invoke(["review", str(det), "--out", str(out), "--no-serve", "--per-class", "4", "--quiet"])
    assert r.exit_code == 0, r.output
    sample = (out / "review.csv").read_bytes()
    first = _csv(out / "review.csv")
    (out / "verdicts.csv").write_text(f"id,recording,begin_s,end_s,class,score,verdict\n"
                                      f"1,{first[0]['recording']},{first[0]['begin_s']},{first[0]['end_s']},tone,"
                                      f"{first[0]['score']},false\n")    # as the --no-serve page downloads it
    os.unlink(out / first[1]["clip"])
    r = invoke(["review", str(det), "--out", str(out), "--no-serve", "--select", "stratified", "--per-class", "1",
                "--quiet"])
    assert r.exit_code == 0, r.output
    assert "it is kept and never drawn again, so --select stratified, --per-class 1 of this run are not used" in r.output
    assert (out / "review.csv").read_bytes() == sample
    assert (out / first[1]["clip"]).exists()                       # a missing clip is made again
    assert "1 of 4 reviewed" in r.output
    assert [s.verdict for s in read_tables(str(out / VERDICTS_TABLE))] == ["false"]   # the table follows the CSV
    r = invoke(["review", str(det), "--out", str(out), "--no-serve", "--quiet"])      # same flags: no note
    assert r.exit_code == 0 and "never drawn again" not in r.output


def test_verdicts_of_another_sample_are_refused(detected, tmp_path):
    _, det = detected
    out = tmp_path / "rv"
    assert invoke(["review", str(det), "--out", str(out), "--no-serve", "--quiet"]).exit_code == 0
    (out / "verdicts.csv").write_text("id,recording,begin_s,end_s,class,score,verdict\n"
                                      "1,x.wav,99.000,100.000,tone,0.5,true\n")
    r = invoke(["review", str(det), "--out", str(out), "--no-serve", "--quiet"])
    assert r.exit_code == 2
    assert "verdicts.csv line 2: item 1 is tone at" in r.output and "belongs to another review" in r.output


def test_recordings_are_found_through_begin_path_or_recordings(detected, tmp_path):
    import shutil

    rec, det = detected
    moved = tmp_path / "moved"
    shutil.copytree(rec, moved)
    csv_only = tmp_path / "dets.csv"
    shutil.copy(det / "detections.csv", csv_only)       # names relative to RECORDINGS, no done.jsonl beside it
    r = invoke(["review", str(csv_only), "--out", str(tmp_path / "r1"), "--no-serve", "--quiet"])
    assert r.exit_code == 2 and "recording 'a.wav' not found; give --recordings DIR" in r.output
    r = invoke(["review", str(csv_only), "--out", str(tmp_path / "r1"), "--no-serve", "--quiet", "--recordings",
                str(moved)])
    assert r.exit_code == 0, r.output
    assert {x["path"] for x in _csv(tmp_path / "r1" / "review.csv")} == {str(moved / n) for n in ("a.wav", "b.wav",
                                                                                               "c.wav")}
    # a Raven table whose Begin Path names the audio needs no --recordings
    t = tmp_path / "tables" / "x.selections.txt"
    t.parent.mkdir()
    t.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tBegin Path\tClass\tScore\n"
                 f"1\tSpectrogram 1\t1\t3.0\t5.0\t{moved / 'a.wav'}\ttone\t0.9\n")
    r = invoke(["review", str(tmp_path / "tables"), "--out", str(tmp_path / "r2"), "--no-serve", "--quiet"])
    assert r.exit_code == 0, r.output
    assert [x["path"] for x in _csv(tmp_path / "r2" / "review.csv")] == [str(moved / "a.wav")]


def test_user_errors_exit_2_with_one_line(detected, tmp_path):
    _, det = detected
    for args, message in (
            ([str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "no such detections folder or file"),
            ([str(det), "--out", str(det)], "is a detect OUT_DIR; give the review a folder of its own"),
            ([str(det), "--out", str(tmp_path / "o"), "--context", "-1"], "--context -1: give seconds >= 0"),
            ([str(det), "--out", str(tmp_path / "o"), "--classes", "tones"], "(did you mean 'tone'?)")):
        r = invoke(["review", *args, "--no-serve"])
        assert r.exit_code == 2 and message in r.output, r.output
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    t = tmp_path / "noscore.txt"
    t.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tBegin File\tClass\n1\t1\t2\ta.wav\ttone\n")
    r = invoke(["review", str(t), "--out", str(tmp_path / "o2"), "--no-serve"])
    assert r.exit_code == 2 and "noscore.txt line 2: no score; review needs detections with a Score column" in r.output


# ---- the server -----------------------------------------------------------------------------------------

def test_server_listens_on_127_0_0_1_only_and_refuses_other_hosts_and_origins(detected, tmp_path):
    import http.client
    import threading

    from convnet_cli.review.build import prepare
    from convnet_cli.review.server import ReviewServer

    _, det = detected
    review = prepare(str(det), str(tmp_path / "rv"), progress=False, echo=lambda m: None)
    server = ReviewServer(review, 0)
    assert server.server_address[0] == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        def ask(method, path, body=None, headers=None):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request(method, path, body=body, headers=headers or {})
            resp = c.getresponse()
            return resp.status, resp.read()

        assert ask("GET", "/")[0] == 200
        assert ask("GET", "/", headers={"Host": "attacker.example:%d" % port})[0] == 403
        post = {"Content-Type": "application/json"}
        assert ask("POST", "/api/verdict", b'{"id": 1, "verdict": "true"}',
                   {**post, "Origin": "http://attacker.example"})[0] == 403
        assert ask("POST", "/api/verdict", b'{"id": 1, "verdict": "maybe"}', post)[0] == 400
        assert ask("POST", "/api/verdict", b'{"id": 99, "verdict": "true"}', post)[0] == 400
        assert ask("POST", "/api/verdict", b'{"id": 1, "verdict": "true"}', post)[0] == 200
        assert ask("GET", "/clips/../review.csv")[0] == 404
        status, body = ask("GET", "/" + review.items[0].listen, headers={"Range": "bytes=0-3"})
        assert status == 206 and body == b"RIFF"
        assert review.store.read() == {1: "true"}
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ConfigError, match=r"--port \d+: in use"):
        busy = ReviewServer(review, 0)
        try:
            ReviewServer(review, busy.server_address[1])
        finally:
            busy.server_close()


# ---- reviewed precision -----------------------------------------------------------------------------------

def test_wilson_interval_against_hand_worked_numbers():
    from convnet_cli.metrics import wilson_interval

    # 8/10: p = .8, z = 1.96: (0.8 + 0.19207) / 1.38415 ± 1.41601 * sqrt(0.016 + 0.00960) = 0.71676 ± 0.22660
    lo, hi = wilson_interval(8, 10)
    assert abs(lo - 0.49016) < 1e-4 and abs(hi - 0.94332) < 1e-4
    lo, hi = wilson_interval(0, 5)                 # 0/5: (0, 2 * 0.21724)
    assert lo == 0.0 and abs(hi - 0.43448) < 1e-4
    assert wilson_interval(0, 0) is None


def test_evaluate_review_dir_reports_precision_per_class_and_per_score_bin(detected, tmp_path):
    rec, det = detected
    # 20 detections of class 'tone' with known scores, on recording a.wav
    dets = tmp_path / "detections.csv"
    lines = ["filename,begin_s,end_s,class,score"]
    scores = [0.50 + 0.025 * i for i in range(20)]          # 0.500 .. 0.975
    lines += [f"a.wav,{i:.3f},{i + 0.5:.3f},tone,{s:.4f}" for i, s in enumerate(scores)]
    dets.write_text("\n".join(lines) + "\n")
    out = tmp_path / "rv"
    r = invoke(["review", str(dets), "--out", str(out), "--recordings", str(rec), "--no-serve", "--quiet",
                "--select", "stratified", "--per-class", "4"])
    assert r.exit_code == 0, r.output
    rows = _csv(out / "review.csv")
    assert len(rows) == 4
    # 4 bins of width 0.11875 (0.5 .. 0.975), 5 detections each: one drawn per bin
    from convnet_cli.review.verdicts import VerdictStore
    from convnet_cli.review.sample import read_sample

    items, settings = read_sample(str(out))
    assert settings["bins"]["tone"]["detections"] == [5, 5, 5, 5]
    store = VerdictStore(str(out), items)
    by_score = sorted(items, key=lambda it: it.score)
    for it, v in zip(by_score, ("false", "false", "true", "unsure")):
        store.record(it.id, v)
    r = invoke(["evaluate", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "evaluation.json").read_text())
    t = res["classes"]["tone"]
    assert (t["sampled"], t["reviewed"], t["true"], t["false"], t["unsure"]) == (4, 4, 1, 2, 1)
    assert abs(t["precision"] - 1 / 3) < 1e-9
    lo, hi = __import__("convnet_cli.metrics", fromlist=["x"]).wilson_interval(1, 3)
    assert (t["precision_low"], t["precision_high"]) == (lo, hi)
    assert [b["precision"] for b in t["bins"]] == [0.0, 0.0, 1.0, None]
    assert t["precision_all"] is None                       # the top bin has only an unsure verdict
    assert "tone" in r.output and "95% interval" in r.output and "per score bin" in r.output
    store.record(by_score[3].id, "true")
    r = invoke(["evaluate", str(out), "--out", str(tmp_path / "ev")])
    t = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["classes"]["tone"]
    assert abs(t["precision_all"] - 0.5) < 1e-9               # (5*0 + 5*0 + 5*1 + 5*1) / 20
    r = invoke(["evaluate", str(det)])                         # no ANNOTATIONS and not a review folder
    assert r.exit_code == 2 and "Missing argument 'ANNOTATIONS'" in r.output


def test_evaluate_review_dir_calibrates_thresholds_from_stratified_verdicts(detected, tmp_path):
    """SPEC 18: stratified verdicts estimate the precision at every threshold, so `evaluate REVIEW_DIR
    --calibrate precision=P` writes thresholds.yaml: the lowest reviewed score whose estimate (each verdict
    weighted by the detections of its bin it stands for) reaches P, never below a score the verdicts do not
    speak for."""
    from convnet_cli.review.sample import read_sample
    from convnet_cli.review.verdicts import VerdictStore
    from convnet_cli.thresholds import read_thresholds

    def read_thresholds_file(path):
        return read_thresholds(path, ["tone"])

    rec, det = detected
    dets = tmp_path / "detections.csv"
    scores = [0.50 + 0.025 * i for i in range(20)]          # 4 bins of 5 detections
    dets.write_text("\n".join(["filename,begin_s,end_s,class,score"]
                              + [f"a.wav,{i:.3f},{i + 0.5:.3f},tone,{s:.4f}" for i, s in enumerate(scores)]) + "\n")
    out = tmp_path / "rv"
    r = invoke(["review", str(dets), "--out", str(out), "--recordings", str(rec), "--no-serve", "--quiet",
                "--select", "stratified", "--per-class", "4"])
    assert r.exit_code == 0, r.output
    items, settings = read_sample(str(out))
    assert settings["bins"]["tone"]["detections"] == [5, 5, 5, 5]
    s = sorted(items, key=lambda it: it.score)               # one per bin, each standing for 5 detections
    store = VerdictStore(str(out), items)
    for it, v in zip(s, ("false", "false", "true", "true")):
        store.record(it.id, v)

    def calibrated(p, *extra):
        r = invoke(["evaluate", str(out), "--calibrate", f"precision={p}", *extra])
        assert r.exit_code == 0, r.output
        return read_thresholds_file(str(out / "thresholds.yaml"))["tone"], r.output

    # by falling score the estimate is 1, 1, 2/3, 1/2
    assert calibrated(0.9)[0] == pytest.approx(s[2].score, abs=1e-6)
    assert calibrated(0.6)[0] == pytest.approx(s[1].score, abs=1e-6)
    t, output = calibrated(0.4, "--quiet")
    assert t == pytest.approx(s[0].score, abs=1e-6) and "thresholds: tone" in output
    # a bin whose verdict is unsure speaks for nothing: no threshold below its top
    store.record(s[1].id, "unsure")
    assert calibrated(0.4)[0] == pytest.approx(s[2].score, abs=1e-6)
    # a sampled item still without a verdict above every other: the verdicts speak for no threshold yet
    fresh = tmp_path / "rv2"
    r = invoke(["review", str(dets), "--out", str(fresh), "--recordings", str(rec), "--no-serve", "--quiet",
                "--select", "stratified", "--per-class", "4"])
    items2, _ = read_sample(str(fresh))
    low = min(items2, key=lambda it: it.score)
    VerdictStore(str(fresh), items2).record(low.id, "true")
    r = invoke(["evaluate", str(fresh), "--calibrate", "precision=0.9"])
    assert r.exit_code == 0, r.output
    assert read_thresholds_file(str(fresh / "thresholds.yaml"))["tone"] == 1.0
    assert "no reviewed threshold reaches precision 0.9" in r.output
    r = invoke(["evaluate", str(out), "--calibrate", "f1"])
    assert r.exit_code == 2 and "ANNOTATIONS" in r.output and "precision=P" in r.output


def test_kill_9_while_a_verdict_is_being_saved_leaves_both_files_whole(detected, tmp_path):
    """The server as its own process, killed (SIGKILL) at once, 2 ms and 10 ms after a verdict is sent: both
    files stay parseable and hold every verdict whose reply came back; the one in flight is in both, in the
    CSV only, or in neither; the next run writes the table from the CSV."""
    import signal
    import threading
    import time
    import urllib.request

    from tests.review_fixtures import start_server, verdicts_on_disk

    _, det = detected
    out = tmp_path / "rv"

    def post(url, item, verdict):
        req = urllib.request.Request(url + "api/verdict", json.dumps({"id": item, "verdict": verdict}).encode(),
                                     {"Content-Type": "application/json"})
        try:
            return urllib.request.urlopen(req, timeout=30).status
        except OSError:
            return None

    confirmed = {}
    for k, delay in enumerate((0.0, 0.002, 0.01)):
        p, url = start_server(det, out)
        try:
            assert post(url, 2 * k + 1, "false") == 200
            confirmed[2 * k + 1] = "false"
            threading.Thread(target=post, args=(url, 2 * k + 2, "true"), daemon=True).start()
            time.sleep(delay)
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(30)
        in_csv, in_table = verdicts_on_disk(out)
        for i, v in confirmed.items():
            assert in_csv[i] == in_table[i] == v
        assert set(in_table) <= set(in_csv) and set(in_csv) - set(confirmed) <= {2 * k + 2}
        confirmed.update({i: v for i, v in in_csv.items() if i not in confirmed})
    r = invoke(["review", str(det), "--out", str(out), "--no-serve", "--quiet"])
    assert r.exit_code == 0, r.output
    in_csv, in_table = verdicts_on_disk(out)
    assert in_csv == in_table == confirmed
