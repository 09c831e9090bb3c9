"""`convnet info PATH [--json]` on each kind of PATH (batch folder, batch file, run directory, checkpoint, ONNX
model), the labels-only batch reader under it, and bad input (one line, exit 2)."""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil

import numpy as np
import pytest

from convnet_cli.data.batch_files import META, BatchSet, encode_batch
from convnet_cli.fileio import write_pickle_atomic
from tests.audio_fixtures import make_tone_dataset
from tests.helpers import invoke

LAYERS = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 4, filterSize: 3, padding: 1}
bn1:    {type: batchnorm, inputs: conv1, neuron: relu}
pool1:  {type: pool, inputs: bn1, pool: max, sizeX: 2}
fc2:    {type: fc, inputs: pool1, outputs: 3}
probs:  {type: softmax, inputs: fc2}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""
PARAMS = "DEFAULT: {updater: adam, epsW: 0.003, epsB: 0.003}\n"


def one_line_error(r, *words):
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convnet: error: "), r.output
    for w in words:
        assert w in lines[0], (w, lines[0])


def info_json(path):
    r = invoke(["info", str(path), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Audio with one undecodable file -> batches (3 classes, 4 batch files) -> a run of 2 epochs."""
    root = tmp_path_factory.mktemp("info")
    make_tone_dataset(root / "audio", classes=("high", "low", "mid"), per_class=6, sr=8000, seconds=0.5, seed=2)
    (root / "audio" / "low" / "broken.wav").write_bytes(b"RIFF\x00\x00not audio")
    (root / "features.yaml").write_text("sample_rate: 8000\nduration: 0.5\nn_fft: 256\nhop: 128\nn_mels: 16\n")
    r = invoke(["make-batches", str(root / "audio"), str(root / "batches"), "--features", str(root / "features.yaml"),
                "--batch-size", "5", "--test-fraction", "0.25", "--jobs", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    (root / "layers.yaml").write_text(LAYERS)
    (root / "params.yaml").write_text(PARAMS)
    r = invoke(["train", "--data-path", str(root / "batches"), "--save-path", str(root / "runs"), "--layer-def",
                str(root / "layers.yaml"), "--layer-params", str(root / "params.yaml"), "--mini", "4",
                "--epochs", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    return root


def run_of(ws):
    (run,) = os.listdir(ws / "runs")
    return ws / "runs" / run


# ---- batch folders ---------------------------------------------------------------------------------------

def test_batch_folder_counts_match_the_full_reader(ws):
    d = info_json(ws / "batches")
    bs = BatchSet(ws / "batches")
    assert d["kind"] == "batches"
    assert d["label_names"] == bs.label_names == ["high", "low", "mid"]
    assert d["data_shape"] == list(bs.data_shape) and d["dtype"] == "float32"
    assert d["train_range"] == bs.train_range and d["test_range"] == bs.test_range and d["test_range"]
    assert d["num_batches"] == len(bs.batch_numbers) >= 3
    totals = {"train": np.zeros(3, int), "test": np.zeros(3, int)}
    for b in d["batches"]:
        y = bs.load_batch(b["batch"])[1]  # what training reads: the data array and all
        assert b["cases"] == y.size
        assert b["per_class"] == np.bincount(y, minlength=3).tolist(), b
        totals["train" if b["batch"] in bs.train_range else "test"] += b["per_class"]
        assert b["split"] == ("train" if b["batch"] in bs.train_range else "test")
    assert d["per_class"]["train"]["per_class"] == totals["train"].tolist()
    assert d["per_class"]["test"]["per_class"] == totals["test"].tolist()
    assert d["per_class"]["all"]["per_class"] == [6, 6, 6] and d["num_cases"] == 18
    assert d["features"] == bs.features and d["features"]["n_mels"] == 16
    assert d["normalisation"].startswith("data_mean/data_std in batches.meta")
    sk = d["skipped"]
    assert sk["count"] == sk["listed"] == 1
    assert sk["examples"][0]["file"].endswith("broken.wav") and sk["reasons"][0]["count"] == 1


def test_batch_folder_text(ws):
    r = invoke(["info", str(ws / "batches")])
    assert r.exit_code == 0, r.output
    out = r.output
    d = info_json(ws / "batches")
    assert "classes        3: high, low, mid" in out
    assert f"{'x'.join(map(str, d['data_shape'])).replace('x', ' x ')} per case" in out
    assert "skipped        1 file" in out and "broken.wav" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] in (["high"], ["low"])}
    assert rows["high"][-1] == "6" and rows["low"][-1] == "6"
    for b in d["batches"]:
        assert any(line.split()[:4] == [str(b["batch"]), b["file"], b["split"], str(b["cases"])]
                   for line in out.splitlines()), b


def test_meta_file_and_batch_file(ws):
    assert info_json(ws / "batches" / META)["kind"] == "batches"
    d = info_json(ws / "batches" / "data_batch_1")
    y = BatchSet(ws / "batches").load_batch(1)[1]
    assert d["kind"] == "batch_file" and d["split"] == "train"
    assert d["cases"] == y.size and d["per_class"] == np.bincount(y, minlength=3).tolist()
    assert d["label_names"] == ["high", "low", "mid"]


def _write_folder(folder, batches, meta):
    os.makedirs(folder, exist_ok=True)
    for i, b in enumerate(batches, 1):
        write_pickle_atomic(os.path.join(folder, f"data_batch_{i}"), b)
    write_pickle_atomic(os.path.join(folder, META), meta)


def test_uint8_and_unlabelled_batches(tmp_path):
    rng = np.random.default_rng(0)
    b1, _ = encode_batch(rng.standard_normal((12, 5)), [0, 1, 1, 0, 1], list("abcde"), dtype="uint8")
    b2, _ = encode_batch(rng.standard_normal((12, 3)), [-1, -1, -1], list("fgh"), dtype="uint8")
    _write_folder(tmp_path / "b", [b1, b2], {"label_names": ["no", "yes"], "num_vis": 12, "data_shape": [1, 3, 4],
                                             "train_range": [1, 1], "test_range": [2, 2], "skipped": 0})
    d = info_json(tmp_path / "b")
    assert d["dtype"] == "uint8" and d["uint8_scaled"]
    assert d["batches"][0]["per_class"] == [2, 3] and d["batches"][1]["unlabelled"] == 3
    assert d["per_class"]["all"] == {"per_class": [2, 3], "unlabelled": 3, "cases": 8}
    assert d["normalisation"].startswith("none stored")
    assert d["skipped"] == {"count": 0, "file": None, "listed": 0, "reasons": [], "examples": []}
    out = invoke(["info", str(tmp_path / "b")]).output
    assert "(unlabelled)" in out and "stored as uint8" in out


def test_cifar_layout(tmp_path):
    """CIFAR-10 python batches: data (n, 3072) uint8, one case per row, no data_shape, a test_batch."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar"
    folder.mkdir()
    for name, labels in (("data_batch_1", [0, 1, 2, 2]), ("test_batch", [1, 1])):
        d = {"batch_label": name, "labels": labels, "data": rng.integers(0, 255, (len(labels), 3072), np.uint8)}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)
    with open(folder / META, "wb") as f:
        pickle.dump({"label_names": ["a", "b", "c"], "num_cases_per_batch": 4, "num_vis": 3072}, f, protocol=2)
    d = info_json(folder)
    assert d["data_shape"] == [3, 32, 32] and d["dtype"] == "uint8"
    assert [b["per_class"] for b in d["batches"]] == [[1, 1, 2], [0, 2, 0]]
    assert d["train_range"] == [1] and d["test_range"] == [2] and d["batches"][1]["file"] == "test_batch"


# ---- the labels-only reader -------------------------------------------------------------------------------

class _CountingFile(io.FileIO):
    """A file that counts the bytes actually read from it."""

    def __init__(self, path):
        super().__init__(path, "rb")
        self.bytes_read = 0

    def read(self, n=-1):
        out = super().read(n)
        self.bytes_read += len(out)
        return out

    def readinto(self, b):
        n = super().readinto(b)
        self.bytes_read += n or 0
        return n


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_labels_without_the_data(tmp_path, protocol):
    from convnet_cli.data import batch_labels
    from convnet_cli.data.batch_files import restricted_load

    n, num_vis = 300, 2000  # 2.4 MB of float32: over SKIP_BYTES
    labels = [i % 4 for i in range(n)]
    data = np.random.default_rng(0).standard_normal((num_vis, n)).astype(np.float32)
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({"labels": labels, "filenames": [f"{i}.wav" for i in range(n)], "data": data}, f,
                    protocol=protocol)
    bl = batch_labels.read_batch_labels(path)
    assert bl.labels.tolist() == labels
    assert bl.data_shape == (num_vis, n) and bl.data_dtype == np.float32
    d = batch_labels.load_without_data(path)
    assert isinstance(d["data"], batch_labels.ArrayInfo) and d["data"].nbytes == data.nbytes  # no array built
    assert d["filenames"][-1] == f"{n - 1}.wav"
    f = _CountingFile(path)
    with f:
        restricted_load(f, str(path), unpickler=batch_labels._LabelsUnpickler)
    assert f.bytes_read < data.nbytes / 50, f.bytes_read  # the payload is seeked over, not read


def test_small_arrays_are_built_and_labels_as_an_array_are_read(tmp_path):
    from convnet_cli.data.batch_labels import load_without_data, read_batch_labels

    path = tmp_path / "b"
    with open(path, "wb") as f:
        pickle.dump({"labels": np.array([2, 0, 1]), "data": np.ones((4, 3), np.float32), "data_scale": 0.5}, f,
                    protocol=2)
    d = load_without_data(path)
    assert isinstance(d["data"], np.ndarray) and d["data"].sum() == 12
    bl = read_batch_labels(path)
    assert bl.labels.tolist() == [2, 0, 1] and bl.has_scale


def test_truncated_and_refused_batch_files(tmp_path):
    from convnet_cli.data.batch_labels import read_batch_labels
    from convnet_cli.errors import DataError

    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({"labels": [0] * 10, "data": np.zeros((40000, 10), np.float32)}, f, protocol=5)
    raw = path.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 3, 40):  # inside the skipped payload, after it, before it
        path.write_bytes(raw[:cut])
        with pytest.raises(DataError, match="truncated"):
            read_batch_labels(path)
    path.write_bytes(pickle.dumps({"data": np.zeros(3), "evil": os.system}, protocol=2))
    with pytest.raises(DataError, match="refused to unpickle 'os.system'"):
        read_batch_labels(path)


def test_truncated_batch_in_a_folder_is_one_line(ws, tmp_path):
    folder = shutil.copytree(ws / "batches", tmp_path / "b")
    raw = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    one_line_error(invoke(["info", str(folder)]), "data_batch_2", "truncated")
    (folder / META).write_bytes(b"")
    one_line_error(invoke(["info", str(folder)]), META)


# ---- runs and checkpoints -----------------------------------------------------------------------------------

def _log_tests(run):
    return [json.loads(line) for line in open(run / "train_log.jsonl") if '"test"' in line]


def test_run_directory(ws, monkeypatch):
    from convnet_cli.layers.base import Layer
    from convnet_cli.net import Net
    from convnet_cli.train.checkpoint import load_checkpoint, newest_checkpoint

    def no_weights(*a, **k):
        raise AssertionError("info drew weights")

    monkeypatch.setattr(Net, "init_params", no_weights)
    classes = [Layer]
    while classes:
        cls = classes.pop()
        monkeypatch.setattr(cls, "init_params", no_weights)
        classes += cls.__subclasses__()
    d = info_json(run_of(ws))
    ck = load_checkpoint(newest_checkpoint(str(run_of(ws))))
    assert d["kind"] == "run" and os.path.samefile(d["checkpoint"], ck.path)
    assert [l["name"] for l in d["layers"]] == ["data", "labels", "conv1", "bn1", "pool1", "fc2", "probs", "logprob"]
    by = {l["name"]: l for l in d["layers"]}
    c, h, w = ck.state["data_shape"]
    assert by["data"]["output_shape"] == [c, h, w]
    assert by["conv1"]["output_shape"] == [4, h, w] and by["conv1"]["type"] == "conv"
    assert by["pool1"]["output_shape"] == [4, (h + 1) // 2, (w + 1) // 2]
    assert by["bn1"]["neuron"] == "relu" and by["probs"]["output_shape"] == [3, 1, 1]
    for name, layer in by.items():
        want = sum(a.size for k, a in ck.arrays.items() if k.count("/") == 1 and k.split("/")[0] == name
                   and not k.split("/")[1].startswith("running"))
        assert layer["params"] == want, name
    assert by["conv1"]["params"] == 4 * 9 + 4 and d["total_params"] == sum(l["params"] for l in d["layers"])
    assert d["options"] == ck.state["options"] and d["options"]["epochs"] == 2
    assert d["epochs_done"] == 2 and d["epochs"] == 2
    assert d["label_names"] == ["high", "low", "mid"]
    tests = _log_tests(run_of(ws))
    best = min(tests, key=lambda t: t["cost"])  # --best-by cost, the default
    assert d["tests"] == len(tests) == 2
    assert d["best"]["by"] == "cost" and d["best"]["cost"] == best["cost"]
    assert (d["best"]["epoch"], d["best"]["batch"]) == (ck.state["best"]["epoch"], ck.state["best"]["batch"])
    assert d["best"]["checkpoint"] == "best.npz"
    assert sorted(c["file"] for c in d["checkpoints"]) == sorted(f for f in os.listdir(run_of(ws)) if f.endswith(".npz"))


def test_run_text_and_checkpoint(ws):
    r = invoke(["info", str(run_of(ws))])
    assert r.exit_code == 0, r.output
    assert "epochs done    2 of 2" in r.output and "best test      " in r.output and "(by cost; best.npz)" in r.output
    conv = next(line for line in r.output.splitlines() if line.startswith("conv1 "))
    assert conv.split()[1:] == ["conv", "data", conv.split()[3], "40"]
    assert "options" in r.output and "layers.yaml" in r.output
    d = info_json(run_of(ws) / "best.npz")
    assert d["kind"] == "checkpoint" and d["checkpoint"].endswith("best.npz")
    assert d["best"]["epoch"] is not None and d["layers"]


def test_best_by_option_is_followed(ws, tmp_path):
    """A run whose options name --best-by cost reports its best test by cost."""
    import zipfile

    run = shutil.copytree(run_of(ws), tmp_path / "run")
    name = sorted(f for f in os.listdir(run) if f[0].isdigit())[-1]
    from convnet_cli.train.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(str(run / name))
    ck.state["options"]["best_by"] = "cost"
    ck.state["best"] = None
    save_checkpoint(str(run / name), ck.arrays, ck.state)
    assert zipfile.is_zipfile(run / name)
    d = info_json(run / name)
    tests = _log_tests(run)
    assert d["best"]["by"] == "cost" and d["best"]["cost"] == min(t["cost"] for t in tests)


def test_bad_checkpoints_and_runs(ws, tmp_path):
    run = shutil.copytree(run_of(ws), tmp_path / "run")
    newest = sorted((f for f in os.listdir(run) if f[0].isdigit()), key=lambda f: os.path.getmtime(run / f))[-1]
    raw = (run / newest).read_bytes()
    (run / newest).write_bytes(raw[: len(raw) // 2])
    one_line_error(invoke(["info", str(run / newest)]), newest, "truncated")
    one_line_error(invoke(["info", str(run)]), newest)
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    one_line_error(invoke(["info", str(tmp_path / "plain.npz")]), "no __state__")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    one_line_error(invoke(["info", str(tmp_path / "junk.npz")]), "junk.npz")


def test_paths_that_are_none_of_these(ws, tmp_path):
    one_line_error(invoke(["info", str(tmp_path / "missing")]), "no such file or folder")
    (tmp_path / "empty_dir").mkdir()
    one_line_error(invoke(["info", str(tmp_path / "empty_dir")]), "nothing convnet can describe")
    one_line_error(invoke(["info", str(ws / "runs")]), "run director", "convnet info")
    one_line_error(invoke(["info", str(ws / "layers.yaml")]), "layers.yaml")
    (tmp_path / "empty").write_bytes(b"")
    one_line_error(invoke(["info", str(tmp_path / "empty")]), "empty file")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    one_line_error(invoke(["info", str(tmp_path / "list.pkl")]), "neither a batch file nor a batches.meta")
    one_line_error(invoke(["info", str(ws / "audio")]), "nothing convnet can describe")
    r = invoke(["info", str(tmp_path / "missing"), "--json"])
    assert r.exit_code == 2 and r.stdout == ""


# ---- ONNX models --------------------------------------------------------------------------------------------

@pytest.fixture
def onnx_model(tmp_path):
    onnx = pytest.importorskip("onnx", reason="the onnx package (the export extra) is not installed")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 48), np.float32), "W")
    nodes = [helper.make_node("Flatten", ["features"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "W"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                                                               ["N", 1, 4, 12])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="convnet",
                              producer_version="0.1.0")
    model.ir_version = 8
    helper.set_model_props(model, {"label_names": json.dumps(["no", "yes"]), "data_shape": "[1, 4, 12]"})
    onnx.checker.check_model(model)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_onnx_model(onnx_model, tmp_path):
    d = info_json(onnx_model)
    assert d["kind"] == "onnx" and d["ir_version"] == 8 and d["opsets"] == {"ai.onnx": 17}
    assert d["inputs"] == [{"name": "features", "type": "float32", "shape": ["N", 1, 4, 12]}]
    assert d["outputs"] == [{"name": "probs", "type": "float32", "shape": ["N", 2]}]
    assert d["metadata"] == {"label_names": '["no", "yes"]', "data_shape": "[1, 4, 12]"}
    assert d["operators"] == {"Flatten": 1, "Gemm": 1, "Softmax": 1} and d["weights"] == 96
    assert d["producer"] == "convnet 0.1.0"
    r = invoke(["info", str(onnx_model)])
    assert r.exit_code == 0, r.output
    assert "features  float32  N x 1 x 4 x 12" in r.output and "label_names" in r.output
    # found by its first bytes too, whatever its name
    shutil.copy(onnx_model, tmp_path / "exported_model")
    assert info_json(tmp_path / "exported_model")["kind"] == "onnx"


def test_bad_onnx(onnx_model, tmp_path):
    raw = onnx_model.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(raw[: len(raw) // 2])
    one_line_error(invoke(["info", str(tmp_path / "cut.onnx")]), "cut.onnx", "not a readable ONNX model")
    (tmp_path / "text.onnx").write_text("hello")
    one_line_error(invoke(["info", str(tmp_path / "text.onnx")]), "text.onnx")


def test_onnx_without_the_onnx_package(tmp_path, monkeypatch):
    from convnet_cli.info import onnx_model

    monkeypatch.setattr(onnx_model, "_onnx", lambda: None)
    (tmp_path / "m.onnx").write_bytes(b"\x08\x08")
    one_line_error(invoke(["info", str(tmp_path / "m.onnx")]), "onnx package", "export")


def test_foreign_meta_values_print(tmp_path):
    """A batches.meta from another writer may hold numpy scalars and bytes: text and JSON still print."""
    b, _ = encode_batch(np.zeros((6, 2)), [0, 1], ["a", "b"])
    _write_folder(tmp_path / "b", [b, b], {"label_names": [b"no", b"yes"], "data_shape": [1, 2, 3],
                                           "train_range": [1, 1], "test_range": [2, 2], "skipped": np.int64(0),
                                           "features": {"sample_rate": np.int64(8000), "kind": b"logmel"}})
    d = info_json(tmp_path / "b")
    assert d["features"] == {"sample_rate": 8000, "kind": "logmel"} and d["label_names"] == ["no", "yes"]
    r = invoke(["info", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert "sample_rate 8000" in r.output


def _info_subprocess(path, timeout=120):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return subprocess.run([sys.executable, "-m", "convnet_cli", "info", str(path)], capture_output=True,
                              text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=root))
    except subprocess.TimeoutExpired:
        pytest.fail(f"convnet info {path} hung")


def test_a_fifo_given_to_info_is_one_line(tmp_path):
    fifo = tmp_path / "data_batch_1"
    os.mkfifo(fifo)
    p = _info_subprocess(fifo)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert str(fifo) in p.stderr and "FIFO" in p.stderr


def test_a_fifo_inside_a_batch_folder_is_one_line(ws, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(ws / "batches", out)
    os.remove(out / "data_batch_2")
    os.mkfifo(out / "data_batch_2")
    p = _info_subprocess(out)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert str(out / "data_batch_2") in p.stderr and "FIFO" in p.stderr


def test_a_half_installed_set_is_reported(ws, tmp_path):
    """After a kill during make-batches' final moves, convnet reads the new set whole; info says that other
    readers (cuda-convnet's own provider) would not, and how to finish the move."""
    out = tmp_path / "b"
    shutil.copytree(ws / "batches", out)
    staging = out / ".make-batches-abc123"
    staging.mkdir()
    files = sorted(n for n in os.listdir(out) if n.startswith("data_batch_")) + ["skipped.txt", META]
    for name in files[-3:]:                          # the moves stopped before these
        shutil.copy(out / name, staging / name)
    (out / ".make-batches.swap").write_text(json.dumps({"staging": staging.name, "files": files}))
    d = info_json(out)
    assert d["interrupted_install"] is True
    r = invoke(["info", str(out)])
    assert r.exit_code == 0 and "half installed" in r.output and "make-batches" in r.output, r.output
    assert info_json(ws / "batches")["interrupted_install"] is False
