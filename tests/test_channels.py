"""--channel N|all|mix (SPEC 19) on synthesised multi-channel files with a call on one channel only: the readers
(whole clips and blocks), annotation tables' Channel column, make-batches (clips and --annotations), predict and
detect; out-of-range channels are one-line errors naming the file and its channel count."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import soundfile as sf

from convnet_cli.errors import ConfigError
from convnet_cli.ingest.annotations import read_tables
from convnet_cli.ingest.audio import ChannelError, parse_channel, read_audio
from convnet_cli.ingest.windows import RecordingReader, recording_header
from tests.detect_fixtures import signal, tone_checkpoint
from tests.helpers import invoke
from tests.test_make_batches_annotations import cases

FEATURES = ("sample_rate: 2000\nduration: 2.0\nkind: logmel\nn_fft: 256\nhop: 100\nn_mels: 16\nfmin: 20\nfmax: 600\n"
            "normalize: pixel\n")
CALL = (4.0, 6.0)     # seconds: a 200 Hz tone on one channel only


def _noise(sr, seconds, seed):
    return (0.02 * np.random.default_rng(seed).standard_normal(int(round(sr * seconds)))).astype(np.float32)


def write_multi(path, seconds, channels, call_on, sr=2000, call=CALL, seed=0):
    """A file of `channels` channels of independent noise; channel `call_on` (1-based) also holds a 200 Hz tone
    during `call`. Returns the (n, channels) samples written."""
    cols = [_noise(sr, seconds, seed + k) for k in range(channels)]
    cols[call_on - 1] = signal(sr, seconds, [call], seed=seed + 100)
    data = np.stack(cols, axis=1)
    sf.write(str(path), data, sr, subtype="FLOAT")
    return data


def one_line_error(result):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# ---- the readers ---------------------------------------------------------------------------------

def test_parse_channel():
    assert parse_channel(None) == "mix" and parse_channel("ALL") == "all" and parse_channel(" mix ") == "mix"
    assert parse_channel("2") == 2 and parse_channel(3) == 3
    for bad in ("0", "-1", "left", "1.5", ""):
        with pytest.raises(ConfigError, match="--channel"):
            parse_channel(bad)


def test_read_audio_takes_one_channel_or_mixes(tmp_path):
    p = tmp_path / "st.wav"
    data = write_multi(p, 3.0, 2, call_on=2)
    x2, sr = read_audio(str(p), channel=2)
    assert sr == 2000
    np.testing.assert_array_equal(x2, data[:, 1])
    np.testing.assert_array_equal(read_audio(str(p), channel=1)[0], data[:, 0])
    np.testing.assert_allclose(read_audio(str(p))[0], data.mean(axis=1), atol=1e-7)      # mix: today's
    np.testing.assert_array_equal(read_audio(str(p), channel="mix")[0], read_audio(str(p))[0])
    with pytest.raises(ChannelError) as exc:
        read_audio(str(p), channel=3)
    assert str(p) in str(exc.value) and "has 2 channels" in str(exc.value)


def test_block_reader_reads_one_channel_as_a_mono_file_of_it(tmp_path, monkeypatch):
    """A 4-channel file read in blocks (and in decode pieces smaller than a block) at another rate gives the
    samples of a mono file holding that channel alone."""
    import convnet_cli.ingest.windows as windows

    monkeypatch.setattr(windows, "DECODE_FRAMES", 777)     # many pieces per block
    p, mono = tmp_path / "quad.wav", tmp_path / "ch3.wav"
    data = write_multi(p, 5.0, 4, call_on=3, sr=3000)
    sf.write(str(mono), data[:, 2], 3000, subtype="FLOAT")
    assert recording_header(str(p)) == (5.0, 3000, 4)
    a, b = RecordingReader(str(p), 1000, channel=3), RecordingReader(str(mono), 1000)
    try:
        for o0, o1 in ((0, 1700), (1700, 3400), (3400, 5000)):
            np.testing.assert_array_equal(a.read(o0, o1), b.read(o0, o1))
    finally:
        a.close()
        b.close()
    r = RecordingReader(str(p), 3000)             # mix, no resampling: the mean of the four
    try:
        np.testing.assert_allclose(r.read(0, 15000), data.mean(axis=1), atol=1e-7)
    finally:
        r.close()
    with pytest.raises(ChannelError, match="has 4 channels"):
        RecordingReader(str(p), 1000, channel=5)


def test_raven_channel_column(tmp_path):
    t = tmp_path / "rec.Table.1.selections.txt"
    t.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tAnnotation\n"
                 "1\tWaveform 1\t2\t4.0\t6.0\tcall\n1\tSpectrogram 1\t2\t4.0\t6.0\tcall\n"
                 "1\tSpectrogram 1\t3\t4.0\t6.0\tcall\n2\tSpectrogram 1\t\t8.0\t9.0\tcall\n")
    sels = read_tables(str(t))
    # Raven numbers each channel's selection on its own: the same number on two channels is two selections
    assert [(s.begin, s.channel) for s in sels] == [(4.0, 2), (4.0, 3), (8.0, None)]
    t.write_text("Selection\tChannel\tBegin Time (s)\tEnd Time (s)\nx\tleft\t1\t2\n")
    with pytest.raises(Exception, match="column 'Channel': 'left' is not a channel number"):
        read_tables(str(t))


# ---- make-batches --annotations --channel -----------------------------------------------------------

@pytest.fixture(scope="module")
def quad(tmp_path_factory):
    """Two 4-channel recordings, a call on channel 3 of rec1 (annotated with Channel 3) and none in rec2."""
    root = tmp_path_factory.mktemp("quad")
    (root / "rec").mkdir()
    (root / "tables").mkdir()
    data = write_multi(root / "rec" / "rec1.wav", 12.0, 4, call_on=3)
    other = write_multi(root / "rec" / "rec2.wav", 12.0, 4, call_on=1, call=(0.0, 0.0), seed=10)
    (root / "tables" / "rec1.Table.1.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tAnnotation\n"
        f"1\tSpectrogram 1\t3\t{CALL[0]}\t{CALL[1]}\tcall\n")
    (root / "tables" / "rec2.Table.1.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tAnnotation\n")
    (root / "mono").mkdir()
    sf.write(str(root / "mono" / "rec1.wav"), data[:, 2], 2000, subtype="FLOAT")
    sf.write(str(root / "mono" / "rec2.wav"), other[:, 0], 2000, subtype="FLOAT")
    (root / "features.yaml").write_text(FEATURES)
    return root


def _windows(root, rec, out, *extra):
    return invoke(["make-batches", str(root / rec), str(out), "--annotations", str(root / "tables"),
                   "--features", str(root / "features.yaml"), "--window-hop", "1", "--jobs", "1", "--quiet",
                   "--test-fraction", "0", *extra])


def test_annotations_channel_all_labels_only_the_annotated_channel(quad, tmp_path):
    r = _windows(quad, "rec", tmp_path / "all", "--channel", "all")
    assert r.exit_code == 0, r.output
    meta, got = cases(tmp_path / "all")
    starts = range(11)                                     # 12 s, windows of 2 s every 1 s
    assert set(got) == {f"rec{i}.wav#ch{k}@{s:.3f}" for i in (1, 2) for k in (1, 2, 3, 4) for s in starts}
    calls = {n for n, v in got.items() if v[0] == "call"}
    assert calls == {f"rec1.wav#ch3@{s:.3f}" for s in (3, 4, 5)}   # windows covering >= half the call
    assert {n for n, v in got.items() if v[0] == "background"} == set(got) - calls   # the other channels too
    # a channel's windows are those of a mono file holding that channel alone
    r = _windows(quad, "mono", tmp_path / "mono", "--label-names", "background,call")
    assert r.exit_code == 0, r.output
    _, mono = cases(tmp_path / "mono")
    for s in (0, 4, 9):
        np.testing.assert_array_equal(got[f"rec1.wav#ch3@{s:.3f}"][2], mono[f"rec1.wav@{s:.3f}"][2])


def test_annotations_channel_n_and_mix(quad, tmp_path):
    r = _windows(quad, "rec", tmp_path / "c3", "--channel", "3")
    assert r.exit_code == 0, r.output
    _, got = cases(tmp_path / "c3")
    assert {n for n, v in got.items() if v[0] == "call"} == {f"rec1.wav@{s:.3f}" for s in (3, 4, 5)}
    r = _windows(quad, "rec", tmp_path / "c1", "--channel", "1")
    assert r.exit_code != 0 and "one class" in r.output        # the call is on channel 3: none on channel 1
    r = _windows(quad, "rec", tmp_path / "mix")                 # mix: the Channel column is not asked
    assert r.exit_code == 0, r.output
    _, mix = cases(tmp_path / "mix")
    assert {n for n, v in mix.items() if v[0] == "call"} == {f"rec1.wav@{s:.3f}" for s in (3, 4, 5)}
    assert not np.array_equal(mix["rec1.wav@4.000"][2], got["rec1.wav@4.000"][2])


def test_channel_past_the_last_is_a_one_line_error(quad, tmp_path):
    line = one_line_error(_windows(quad, "rec", tmp_path / "c9", "--channel", "9"))
    assert "rec1.wav" in line and "has 4 channels" in line and "--channel 9" in line
    assert not (tmp_path / "c9").exists() or not os.listdir(tmp_path / "c9")
    line = one_line_error(_windows(quad, "rec", tmp_path / "bad", "--channel", "left"))
    assert "--channel left" in line


def test_channels_of_a_recording_stay_on_one_side_of_the_split(quad, tmp_path):
    r = _windows(quad, "rec", tmp_path / "split", "--channel", "all", "--test-fraction", "0.5")
    assert r.exit_code == 0, r.output
    meta, got = cases(tmp_path / "split")
    test = set(range(meta["test_range"][0], meta["test_range"][1] + 1)) if meta.get("test_range") else set()
    side = {}
    for name, (_, b, _) in got.items():
        side.setdefault(name.split("#")[0], set()).add(b in test)
    assert all(len(v) == 1 for v in side.values()) and len(side) == 2


# ---- make-batches (clips) and predict -------------------------------------------------------------

@pytest.fixture(scope="module")
def stereo_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for c, k in (("tone", 0), ("noise", 1)):
        (root / "audio" / c).mkdir(parents=True)
        for i in range(4):
            if c == "tone":
                write_multi(root / "audio" / c / f"{i}.wav", 1.0, 2, call_on=2, call=(0.0, 1.0), seed=i * 7)
            else:
                sf.write(str(root / "audio" / c / f"{i}.wav"),
                         np.stack([_noise(2000, 1.0, i), _noise(2000, 1.0, i + 50)], axis=1), 2000, subtype="FLOAT")
    (root / "features.yaml").write_text(FEATURES.replace("duration: 2.0", "duration: 1.0"))
    return root


def test_clips_channel_all_one_case_per_channel(stereo_clips, tmp_path):
    r = invoke(["make-batches", str(stereo_clips / "audio"), str(tmp_path / "b"), "--features",
                str(stereo_clips / "features.yaml"), "--channel", "all", "--jobs", "1", "--quiet",
                "--test-fraction", "0.5", "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    meta, got = cases(tmp_path / "b")
    assert set(got) == {f"{c}/{i}.wav#ch{k}" for c in ("tone", "noise") for i in range(4) for k in (1, 2)}
    assert all(v[0] == n.split("/")[0] for n, v in got.items())      # each channel keeps its clip's label
    test = set(range(meta["test_range"][0], meta["test_range"][1] + 1))
    side = {}
    for name, (_, b, _) in got.items():
        side.setdefault(name.split("#")[0], set()).add(b in test)
    assert all(len(v) == 1 for v in side.values())                    # a clip's channels on one side
    x2, sr = read_audio(str(stereo_clips / "audio" / "tone" / "0.wav"), channel=2)
    from convnet_cli.ingest.features import FeatureSpec, compute_features

    spec = FeatureSpec.from_dict(meta["features"])
    ref = compute_features(x2[None, :spec.num_samples], spec, np).reshape(-1)
    np.testing.assert_allclose(got["tone/0.wav#ch2"][2], ref, atol=1e-5)
    line = one_line_error(invoke(["make-batches", str(stereo_clips / "audio"), str(tmp_path / "c"), "--features",
                                  str(stereo_clips / "features.yaml"), "--channel", "3", "--quiet"]))
    assert "has 2 channels" in line and ".wav" in line


def test_predict_channel_all_a_row_per_channel(stereo_clips, tmp_path):
    ck = tone_checkpoint(tmp_path / "best.npz")
    out = tmp_path / "p.csv"
    r = invoke(["predict", "-f", str(ck), str(stereo_clips / "audio" / "tone"), "--out", str(out), "--channel", "all"])
    assert r.exit_code == 0, r.output
    with open(out, newline="") as f:
        rows = {row["filename"]: row for row in csv.DictReader(f)}
    assert set(rows) == {f"{i}.wav#ch{k}" for i in range(4) for k in (1, 2)}
    for i in range(4):                             # the tone is on channel 2 only
        assert rows[f"{i}.wav#ch2"]["predicted"] == "tone" and rows[f"{i}.wav#ch1"]["predicted"] == "noise"
    r = invoke(["predict", "-f", str(ck), str(stereo_clips / "audio" / "tone"), "--out", str(out), "--channel", "1"])
    assert r.exit_code == 0, r.output
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {row["predicted"] for row in rows} == {"noise"}
    assert "has 2 channels" in one_line_error(invoke(["predict", "-f", str(ck), str(stereo_clips / "audio" / "tone"),
                                                      "--out", str(out), "--channel", "4"]))


# ---- detect --channel ------------------------------------------------------------------------------

def _table(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_detect_channel_all_writes_each_events_channel(tmp_path):
    ck = tone_checkpoint(tmp_path / "best.npz")
    (tmp_path / "rec").mkdir()
    calls = [(5.0, 8.0), (20.0, 23.0)]
    cols = [_noise(2000, 30.0, 1), signal(2000, 30.0, [calls[0]], seed=2), _noise(2000, 30.0, 3),
            signal(2000, 30.0, [calls[1]], seed=4)]
    sf.write(str(tmp_path / "rec" / "quad.wav"), np.stack(cols, axis=1), 2000, subtype="FLOAT")
    out = tmp_path / "out"
    r = invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(out), "--quiet", "--channel", "all",
                "--combined", "--scores"])
    assert r.exit_code == 0, r.output
    rows = _table(out / "quad.selections.txt")
    got = sorted((r["Channel"], float(r["Begin Time (s)"])) for r in rows)
    assert [c for c, _ in got] == ["2", "4"]
    for (c, b), (tb, _) in zip(got, calls):
        assert abs(b - tb) <= 1.0
    with open(out / "detections.csv", newline="") as f:
        dets = list(csv.DictReader(f))
    assert list(dets[0]) == ["filename", "begin_s", "end_s", "class", "score", "channel"]
    assert sorted(d["channel"] for d in dets) == ["2", "4"] and {d["filename"] for d in dets} == {"quad.wav"}
    assert sorted(r["Channel"] for r in _table(out / "detections.selections.txt")) == ["2", "4"]
    # scores.csv names each channel's windows; --from-scores makes the same events on the same channels
    with open(out / "scores.csv", newline="") as f:
        assert {row["filename"] for row in csv.DictReader(f)} == {f"quad.wav#ch{k}" for k in (1, 2, 3, 4)}
    r = invoke(["detect", "--from-scores", str(out), "--out", str(tmp_path / "re")])
    assert r.exit_code == 0, r.output
    again = _table(tmp_path / "re" / "quad.selections.txt")
    assert [(r["Channel"], r["Begin Time (s)"]) for r in again] == [(r["Channel"], r["Begin Time (s)"]) for r in rows]
    with open(tmp_path / "re" / "detections.csv", newline="") as f:
        assert sorted(d["channel"] for d in csv.DictReader(f)) == ["2", "4"]
    # a resume keeps the channels (the table is read back, not recomputed)
    r = invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(out), "--quiet", "--channel", "all",
                "--resume", "--scores"])
    assert r.exit_code == 0, r.output
    with open(out / "detections.csv", newline="") as f:
        assert sorted(d["channel"] for d in csv.DictReader(f)) == ["2", "4"]
    # another --channel is other settings: a resume refuses it
    r = invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(out), "--quiet", "--channel", "2",
                "--resume", "--scores"])
    assert r.exit_code == 2 and "channel" in r.output
    # one channel: its events, in its Channel column
    r = invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(tmp_path / "o4"), "--quiet",
                "--channel", "4"])
    assert r.exit_code == 0, r.output
    rows = _table(tmp_path / "o4" / "quad.selections.txt")
    assert [r["Channel"] for r in rows] == ["4"] and abs(float(rows[0]["Begin Time (s)"]) - calls[1][0]) <= 1.0
    # mix (the default): today's table, Channel 1, and detections.csv without a channel column
    r = invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(tmp_path / "om"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert {r["Channel"] for r in _table(tmp_path / "om" / "quad.selections.txt")} <= {"1"}
    with open(tmp_path / "om" / "detections.csv", newline="") as f:
        assert next(csv.reader(f)) == ["filename", "begin_s", "end_s", "class", "score"]
    line = one_line_error(invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(tmp_path / "o9"),
                                  "--quiet", "--channel", "9"]))
    assert "quad.wav" in line and "has 4 channels" in line


def test_evaluate_matches_detections_to_annotations_on_their_channel(tmp_path):
    """A --channel all run's detections match only the annotations of their channel; a mixed run's match any."""
    from convnet_cli.detect.evaluate import evaluate, load_pair

    ck = tone_checkpoint(tmp_path / "best.npz")
    (tmp_path / "rec").mkdir()
    calls = [(5.0, 8.0), (20.0, 23.0)]
    sf.write(str(tmp_path / "rec" / "st.wav"),
             np.stack([signal(2000, 30.0, [calls[0]], seed=2), signal(2000, 30.0, [calls[1]], seed=4)], axis=1),
             2000, subtype="FLOAT")
    for out, extra in (("all", ["--channel", "all"]), ("mix", [])):
        r = invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(tmp_path / out), "--quiet", *extra])
        assert r.exit_code == 0, r.output
    ann = tmp_path / "st.Table.1.selections.txt"

    def scored(out, channels):
        ann.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tAnnotation\n" + "".join(
            f"{i}\tSpectrogram 1\t{ch}\t{b}\t{e}\ttone\n" for i, ((b, e), ch) in enumerate(zip(calls, channels), 1)))
        dets, anns, classes, notes = load_pair(str(tmp_path / out), str(ann))
        res = evaluate(dets, anns, ["tone"], 0.5, 0.9, notes).result["classes"]["tone"]
        return res["tp"], res["fp"], res["fn"]

    assert scored("all", (1, 2)) == (2, 0, 0)
    assert scored("all", (1, 1)) == (1, 1, 1)       # the second call was found on channel 2, annotated on 1
    assert scored("all", ("", "")) == (2, 0, 0)     # no channel given: any channel
    assert scored("mix", (1, 2)) == (2, 0, 0)       # the channels mixed: Channel 1 in the tables, any matches
    # detections.csv carries the channels too
    dets, anns, classes, notes = load_pair(str(tmp_path / "all" / "detections.csv"), str(ann))
    assert sorted(d.channel for v in dets.values() for d in v) == [1, 2]


def _reviewed(det, out):
    """(review.csv rows, the first item's clip samples and rate) of `convnet review DET --out OUT`."""
    r = invoke(["review", str(det), "--out", str(out), "--no-serve", "--context", "0"])
    assert r.exit_code == 0, r.output
    with open(out / "review.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    x, sr = sf.read(str(out / rows[0]["clip"]), dtype="float32")
    return rows, x, sr


def test_review_cuts_clips_from_the_detections_channel_and_real_time(tmp_path):
    """convnet review of a --channel all run plays the channel each detection was found on; of a time-expanded
    run, the real-time stretch at the true rate."""
    ck = tone_checkpoint(tmp_path / "best.npz")
    (tmp_path / "rec").mkdir()
    cols = np.stack([signal(2000, 20.0, [(5.0, 8.0)], seed=2), _noise(2000, 20.0, 5)], axis=1)
    sf.write(str(tmp_path / "rec" / "st.wav"), cols, 2000, subtype="FLOAT")
    r = invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(tmp_path / "det"), "--quiet",
                "--channel", "all"])
    assert r.exit_code == 0, r.output
    rows, x, sr = _reviewed(tmp_path / "det", tmp_path / "rev")
    assert [row["channel"] for row in rows] == ["1"]
    b = int(round(float(rows[0]["begin_s"]) * 2000))
    np.testing.assert_allclose(x, cols[b:b + x.size, 0], atol=1e-4)       # channel 1's samples, not the mix
    # time-expanded: a 200 Hz header, F = 10; the clip is at 2 kHz, cut at the real times
    (tmp_path / "te").mkdir()
    sf.write(str(tmp_path / "te" / "te.wav"), cols[:, 0], 200, subtype="FLOAT")
    r = invoke(["detect", "-f", str(ck), str(tmp_path / "te"), "--out", str(tmp_path / "dte"), "--quiet",
                "--time-expansion", "10"])
    assert r.exit_code == 0, r.output
    rows, x, sr = _reviewed(tmp_path / "dte", tmp_path / "rte")
    assert len(rows) == 1 and rows[0]["channel"] == "" and sr == 2000
    b = int(round(float(rows[0]["begin_s"]) * 2000))
    np.testing.assert_allclose(x, cols[b:b + x.size, 0], atol=1e-4)


def test_noisy_copies_of_a_channel_are_copies_of_that_channel(stereo_clips, tmp_path):
    r = invoke(["make-batches", str(stereo_clips / "audio"), str(tmp_path / "b"), "--features",
                str(stereo_clips / "features.yaml"), "--channel", "all", "--jobs", "1", "--quiet",
                "--test-fraction", "0", "--gain", "0,0", "--copies", "1"])
    assert r.exit_code == 0, r.output
    _, got = cases(tmp_path / "b")
    assert len(got) == 2 * 16
    for name in ("tone/1.wav#ch2", "tone/1.wav#ch1", "noise/3.wav#ch2"):     # a 0 dB gain: the same features
        np.testing.assert_allclose(got[name + "#copy1"][2], got[name][2], atol=1e-5)
    assert not np.allclose(got["tone/1.wav#ch1"][2], got["tone/1.wav#ch2"][2], atol=1e-2)


def test_noisy_copies_of_windows_are_read_from_their_channel(quad, tmp_path):
    r = _windows(quad, "rec", tmp_path / "b", "--channel", "all", "--gain", "0,0", "--copies", "1")
    assert r.exit_code == 0, r.output
    _, got = cases(tmp_path / "b")
    for name in ("rec1.wav#ch3@4.000", "rec1.wav#ch1@4.000", "rec2.wav#ch4@0.000"):
        np.testing.assert_allclose(got[name + "#copy1"][2], got[name][2], atol=1e-5)


def test_verdicts_keep_the_channel_of_their_detection(tmp_path):
    """A verdict on a detection of channel 2 names channel 2 in verdicts.selections.txt and verdicts.csv, so
    make-batches --channel all applies it to that channel only."""
    from convnet_cli.ingest.annotations import read_tables
    from convnet_cli.review.build import prepare

    ck = tone_checkpoint(tmp_path / "best.npz")
    (tmp_path / "rec").mkdir()
    cols = np.stack([_noise(2000, 20.0, 5), signal(2000, 20.0, [(5.0, 8.0)], seed=2)], axis=1)
    sf.write(str(tmp_path / "rec" / "st.wav"), cols, 2000, subtype="FLOAT")
    r = invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(tmp_path / "det"), "--quiet",
                "--channel", "all"])
    assert r.exit_code == 0, r.output
    review = prepare(str(tmp_path / "det"), str(tmp_path / "rv"), select="top", progress=False, echo=lambda m: None)
    assert [it.channel for it in review.items] == [2]
    review.store.record(review.items[0].id, "false")
    table = (tmp_path / "rv" / "verdicts.selections.txt").read_text().splitlines()
    head = table[0].split("\t")
    assert table[1].split("\t")[head.index("Channel")] == "2"
    with open(tmp_path / "rv" / "verdicts.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["channel"] == "2" and row["verdict"] == "false"
    for path in ("verdicts.selections.txt", "verdicts.csv"):
        (sel,) = read_tables(str(tmp_path / "rv" / path))
        assert sel.channel == 2 and sel.verdict == "false", path
