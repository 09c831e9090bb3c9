"""Selection tables as BirdNET-Analyzer writes them (`--rtype table`): no column SPEC's label defaults name
(Annotation, Class, Label, Species, Call Type), the species in `Common Name` and `Species Code`, the audio in
`Begin Path` (an absolute path of the machine that ran it). Without --label-col every selection is 'call'
(SPEC 11) and a set of one class is refused, naming --label-col and BirdNET's columns; with it, the codes
are the classes."""
from __future__ import annotations

from tests.annotation_fixtures import write_recording
from tests.helpers import invoke

FEATURES = "sample_rate: 2000\nduration: 1.0\nkind: logmel\nn_fft: 256\nhop: 100\nn_mels: 16\nfmin: 20\nfmax: 900\n"
HEADER = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
          "Common Name", "Species Code", "Confidence", "Begin Path", "File Offset (s)"]
CALLS = [(0.5, 2.5, "Wood Thrush", "woothr", 300.0), (4.0, 6.5, "Northern Cardinal", "norcar", 700.0),
         (8.0, 9.5, "Wood Thrush", "woothr", 300.0)]


def _survey(tmp_path):
    write_recording(str(tmp_path / "rec" / "dawn.wav"), 10.0, calls=[(b, e, f) for b, e, _, _, f in CALLS])
    rows = ["\t".join(HEADER)]
    for i, (b, e, name, code, _) in enumerate(CALLS, 1):
        rows.append("\t".join([str(i), "Spectrogram 1", "1", f"{b:.1f}", f"{e:.1f}", "150", "3000", name, code,
                               "0.91", "/home/someone/field/dawn.wav", f"{b:.1f}"]))
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "dawn.BirdNET.selection.table.txt").write_text("\n".join(rows) + "\n")
    (tmp_path / "f.yaml").write_text(FEATURES)


def _make(tmp_path, *extra):
    return invoke(["make-batches", str(tmp_path / "rec"), str(tmp_path / "b"), "--annotations",
                   str(tmp_path / "tables"), "--features", str(tmp_path / "f.yaml"), "--test-fraction", "0",
                   "--window-hop", "0.5", "--quiet", *extra])


def test_without_label_col_the_one_class_error_names_birdnets_columns(tmp_path):
    _survey(tmp_path)
    r = _make(tmp_path, "--multi-label")      # every window then holds 'call' or is empty: multi-label allows it
    assert r.exit_code == 0, r.output
    assert "no label column" in r.output and "'Common Name', 'Species Code'" in r.output
    r = _make(tmp_path, "--background-ratio", "0", "--overwrite")  # no background window left: one class
    assert r.exit_code == 2, r.output
    last = r.output.strip().splitlines()[-1]
    assert "every window is annotated 'call'" in last and "--label-col 'Common Name' or 'Species Code'" in last


def test_with_label_col_the_species_codes_are_the_classes(tmp_path):
    _survey(tmp_path)
    r = _make(tmp_path, "--label-col", "Species Code")
    assert r.exit_code == 0, r.output
    from convnet_cli.data.batch_files import BatchSet

    meta = BatchSet(str(tmp_path / "b")).meta
    assert meta["label_names"] == ["background", "norcar", "woothr"]
    assert meta["windows"]["counts"]["woothr"] > 0 and meta["windows"]["counts"]["norcar"] > 0


def test_evaluate_scores_birdnets_tables_by_their_species_column_and_confidence(tmp_path):
    _survey(tmp_path)
    ann = tmp_path / "ann"
    ann.mkdir()
    rows = ["Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies"]
    for i, (b, e, _, code, _) in enumerate(CALLS[:2], 1):   # the third BirdNET detection is a false positive
        rows.append("\t".join([str(i), "Spectrogram 1", "1", f"{b:.1f}", f"{e:.1f}", "150", "3000", code]))
    (ann / "dawn.Table.1.selections.txt").write_text("\n".join(rows) + "\n")
    r = invoke(["evaluate", str(tmp_path / "tables"), str(ann), "--detections-label-col", "Species Code",
                "--target-precision", "0.6", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    import json

    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert ev["classes"]["woothr"]["tp"] == 1 and ev["classes"]["woothr"]["fp"] == 1
    assert ev["classes"]["norcar"]["tp"] == 1 and ev["overall"]["fn"] == 0
    assert ev["overall"]["threshold_at_precision"] == 0.91      # the Confidence column is the score
    r = invoke(["evaluate", str(tmp_path / "tables"), str(ann), "--out", str(tmp_path / "ev2")])
    assert r.exit_code == 0 and "name one with --detections-label-col" in r.output, r.output
