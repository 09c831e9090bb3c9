"""`convnet show`: each plot is written, is a valid PNG of the expected size and is not blank.

The plot functions are tested on synthetic arrays; the command on a tiny run trained here through the CLI
(3 classes of random 1x8x12 "spectrograms", two epochs).
"""
from __future__ import annotations

import glob
import os
import pickle
import struct
import sys

import numpy as np
import pytest

from convnet_cli.errors import ConfigError
from tests.helpers import invoke

pytest.importorskip("matplotlib")

from convnet_cli.show import plots  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple:
    """(width, height) from the IHDR chunk, after checking the signature."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def check_png(path, size=None, tol=1):
    """A valid PNG, of `size` (width, height) within tol px, whose pixels are not all alike."""
    import matplotlib.image as mpimg

    assert os.path.isfile(path)
    w, h = png_size(path)
    if size is not None:
        assert abs(w - size[0]) <= tol and abs(h - size[1]) <= tol, f"{path}: {w}x{h}, want {size[0]}x{size[1]}"
    img = mpimg.imread(path)
    assert img.shape[:2] == (h, w)
    rgb = img[..., :3]
    assert float(rgb.std()) > 0.03, f"{path} looks blank"
    # some pixels are far from white: something was drawn on the white background
    assert float((rgb.mean(axis=2) < 0.5).mean()) > 0.001


# -- the plot functions on synthetic data -----------------------------------------------------------------
def log_records():
    recs = []
    for e in range(1, 5):
        for b in range(1, 4):
            p = e - 1 + b / 3
            recs.append({"type": "train", "epoch": e, "batch": b, "progress": p, "cases": 100,
                         "cost": 2.0 / (1 + p), "error": 0.6 / (1 + p), "costs": {}, "seconds": 0.1, "lr": {}})
        recs.append({"type": "test", "epoch": e, "batch": 3, "progress": float(e), "cases": 50,
                     "cost": 2.2 / (1 + e), "error": 0.7 / (1 + e), "costs": {}, "seconds": 0.1, "lr": {}})
    return recs


def test_plot_cost(tmp_path):
    path = plots.plot_cost(log_records(), str(tmp_path / "cost.png"))
    assert path == str(tmp_path / "cost.png")
    check_png(path, plots.COST_SIZE)


def test_plot_cost_without_error_rates(tmp_path):
    recs = [dict(r, error=None) for r in log_records()]
    check_png(plots.plot_cost(recs, str(tmp_path / "cost.png")), plots.COST_SIZE)


def test_plot_filters_rgb(tmp_path):
    w = np.random.default_rng(0).standard_normal((32, 3, 5, 5)).astype(np.float32)
    path = plots.plot_filters(w, str(tmp_path / "f.png"), title="conv1")
    # 16 per row, 2 rows; 5x5 tiles with a 1 px border, scaled by int(min(60/5, 120/5)) = 12:
    # width (16*6+1)*12 + 2*20 = 1204, height (2*6+1)*12 + 20 + 40 = 216
    check_png(path, (1204, 216))
    assert plots.filter_grid_size(32, 5, 5)[:2] == (1204, 216)


def test_plot_filters_one_channel_spectrogram(tmp_path):
    w = np.random.default_rng(1).standard_normal((20, 1, 9, 5))
    path = plots.plot_filters(w, str(tmp_path / "f.png"))
    # scale int(min(60/5, 120/9)) = 12; width (16*6+1)*12 + 40 = 1204; height (2*10+1)*12 + 60 = 312
    check_png(path, (1204, 312))


def test_filter_tiles_normalization():
    w = np.zeros((2, 1, 2, 2))
    w[0, 0] = [[1, -3], [0, 2]]
    tiles, rgb, _ = plots.filter_tiles(w)
    assert not rgb
    np.testing.assert_allclose(tiles[0], [[1 / 3, -1], [0, 2 / 3]])
    np.testing.assert_allclose(tiles[1], 0)  # an all-zero filter stays 0, no division by zero
    tiles, rgb, _ = plots.filter_tiles(np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2))
    assert rgb and tiles.shape == (2, 2, 2, 3) and tiles.min() == 0 and tiles.max() == 1
    tiles, rgb, note = plots.filter_tiles(np.ones((4, 5, 3, 3)), max_filters=8)
    assert tiles.shape == (8, 3, 3) and "channels" in note and "first 8" in note


def synthetic_preds(n=10, k=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 16, 30)).astype(np.float32)
    p = rng.dirichlet(np.ones(k), size=n)
    y = rng.integers(0, k, n)
    return x, p, y, [f"class{i}" for i in range(k)]


def test_plot_preds(tmp_path):
    x, p, y, names = synthetic_preds()
    path = plots.plot_preds(x, p, y, names, str(tmp_path / "p.png"), topk=3,
                            filenames=[f"clip_{i}.wav" for i in range(10)])
    # 4 cases per row of 500x180 px, 3 rows, 40 px title
    check_png(path, (2000, 580))


def test_plot_preds_only_errors_and_rgb(tmp_path):
    x, p, y, names = synthetic_preds()
    y = p.argmax(axis=1)
    y[[2, 5]] = (y[[2, 5]] + 1) % 4  # exactly two errors
    rgb = np.random.default_rng(2).random((10, 3, 8, 8))
    assert list(plots.select_cases(p, y, only_errors=True)) == [2, 5]
    path = plots.plot_preds(rgb, p, y, names, str(tmp_path / "e.png"), only_errors=True)
    check_png(path, (1000, 220))
    with pytest.raises(ValueError, match="no misclassified"):
        plots.plot_preds(rgb, p, p.argmax(axis=1), names, str(tmp_path / "none.png"), only_errors=True)


def test_plot_confusion(tmp_path):
    conf = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    path = plots.plot_confusion(conf, ["yes", "no", "maybe"], str(tmp_path / "c.png"))
    check_png(path, plots.confusion_size(3))
    assert plots.confusion_size(3) == (600, 500)
    big = np.random.default_rng(0).integers(0, 9, (40, 40))
    check_png(plots.plot_confusion(big, [f"label{i}" for i in range(40)], str(tmp_path / "c40.png")),
              plots.confusion_size(40))


def test_missing_matplotlib_is_a_config_error(monkeypatch):
    for mod in list(sys.modules):
        if mod == "matplotlib" or mod.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"matplotlib is not installed; install it with: pip install 'convnet\[plot\]'"):
        plots.require_matplotlib()


def test_filter_weights_of_conv_local_and_fc():
    from types import SimpleNamespace

    from convnet_cli.show.run import filter_weights

    layer_def = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 4, filterSize: 3, padding: 1}
loc2:   {type: local, inputs: conv1, filters: 2, filterSize: 3}
fc3:    {type: fc, inputs: loc2, outputs: 3}
probs:  {type: softmax, inputs: fc3}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""
    rng = np.random.default_rng(0)
    # conv1: (1, 6, 8) -> (4, 6, 8); loc2: 3x3 without padding -> (2, 4, 6), one filter bank per position
    arrays = {"conv1/weights": rng.standard_normal((4, 1, 3, 3)), "loc2/weights": rng.standard_normal((24, 2, 36)),
              "fc3/weights": rng.standard_normal((3, 48))}
    ckpt = SimpleNamespace(arrays=arrays, state={"layer_def": layer_def, "data_shape": [1, 6, 8]})
    w, _ = filter_weights(ckpt, "conv1")
    assert w.shape == (4, 1, 3, 3)
    w, what = filter_weights(ckpt, "loc2")
    # the bank at the center of the 4x6 output: position (2, 3) = row-major index 2*6 + 3
    np.testing.assert_allclose(w, arrays["loc2/weights"][15].reshape(2, 4, 3, 3), rtol=1e-6)
    assert "2,3" in what
    w, _ = filter_weights(ckpt, "fc3")
    np.testing.assert_allclose(w, arrays["fc3/weights"].reshape(3, 2, 4, 6), rtol=1e-6)
    with pytest.raises(ConfigError, match="has no filters to show; --filters takes a conv, local or fc layer: "
                                          "conv1, loc2, fc3"):
        filter_weights(ckpt, "probs")
    with pytest.raises(ConfigError, match="did you mean 'loc2'"):
        filter_weights(ckpt, "loc")


# -- the command, on a real (tiny) run -------------------------------------------------------------------------
LAYERS = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 6, filterSize: 3, padding: 1, neuron: relu}
fc2:    {type: fc, inputs: conv1, outputs: 3}
probs:  {type: softmax, inputs: fc2}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""
PARAMS = "DEFAULT: {updater: adam, epsW: 0.003, epsB: 0.003}\n"
SHAPE = (1, 8, 12)


def write_batches(folder, rng, n_batches=4, per_batch=12, k=3):
    """A batch folder in the cuda-convnet format: class c has a bright band at row 2c, plus noise."""
    os.makedirs(folder)
    num_vis = int(np.prod(SHAPE))
    for b in range(1, n_batches + 1):
        labels = rng.integers(0, k, per_batch)
        x = rng.standard_normal((per_batch,) + SHAPE).astype(np.float32)
        for i, c in enumerate(labels):
            x[i, 0, 2 * c] += 1.5
        with open(os.path.join(folder, f"data_batch_{b}"), "wb") as f:
            pickle.dump({"data": np.ascontiguousarray(x.reshape(per_batch, num_vis).T),
                         "labels": [int(v) for v in labels],
                         "filenames": [f"c{c}/clip_{b}_{i}.wav" for i, c in enumerate(labels)]}, f)
    meta = {"label_names": [f"class{c}" for c in range(k)], "num_vis": num_vis, "data_shape": list(SHAPE),
            "num_cases_per_batch": per_batch, "num_batches": n_batches, "train_range": [1, n_batches - 1],
            "test_range": [n_batches, n_batches], "data_mean": np.zeros((num_vis, 1), np.float32),
            "data_std": np.ones((num_vis, 1), np.float32), "features": None, "skipped": 0}
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump(meta, f)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("show")
    write_batches(str(root / "batches"), np.random.default_rng(0))
    (root / "layers.yaml").write_text(LAYERS)
    (root / "params.yaml").write_text(PARAMS)
    r = invoke(["train", "--data-path", str(root / "batches"), "--save-path", str(root / "runs"),
                "--layer-def", str(root / "layers.yaml"), "--layer-params", str(root / "params.yaml"),
                "--epochs", "2", "--mini", "6", "--quiet"])
    assert r.exit_code == 0, r.output
    runs = glob.glob(str(root / "runs" / "*"))
    assert len(runs) == 1
    return runs[0]


def test_show_writes_every_plot(run_dir):
    r = invoke(["show", "-f", run_dir, "--cost", "--filters", "conv1", "--preds", "probs", "--confusion"])
    assert r.exit_code == 0, r.output
    paths = r.output.split()
    names = ["cost.png", "filters-conv1.png", "preds-probs.png", "confusion.png"]
    assert paths == [os.path.join(run_dir, n) for n in names]
    check_png(paths[0], plots.COST_SIZE)
    check_png(paths[1], plots.filter_grid_size(6, 3, 3)[:2])
    check_png(paths[2], plots.preds_grid_size(12)[:2])  # the 12 test cases (--max-cases 32)
    check_png(paths[3], plots.confusion_size(3))


def test_show_out_dir_fc_filters_only_errors_and_checkpoint_file(run_dir, tmp_path):
    out = tmp_path / "plots"
    best = os.path.join(run_dir, "best.npz")
    r = invoke(["show", "-f", best, "--filters", "fc2", "--preds", "probs", "--only-errors", "--max-cases", "4",
                "--topk", "2", "--out-dir", str(out)])
    assert r.exit_code == 0, r.output
    paths = r.output.split()
    assert paths == [str(out / "filters-fc2.png"), str(out / "preds-probs-errors.png")]
    # fc2's 3 units shown as filters over its 6x8x12 input: one tile per (unit, channel) = 18 tiles
    check_png(paths[0], plots.filter_grid_size(18, 8, 12)[:2])
    check_png(paths[1])
    assert not glob.glob(os.path.join(run_dir, "preds-*errors.png"))


def test_show_cost_from_checkpoint_history_when_log_is_missing(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    os.unlink(copy / "train_log.jsonl")
    r = invoke(["show", "-f", str(copy), "--cost"])
    assert r.exit_code == 0, r.output
    check_png(str(copy / "cost.png"), plots.COST_SIZE)


@pytest.mark.parametrize("args,parts", [
    (["--filters", "conv"], ["layer 'conv'", "did you mean 'conv1'"]),
    (["--filters", "probs"], ["'probs'", "no filters", "conv1, fc2"]),
    (["--preds", "prob"], ["prob", "did you mean 'probs'"]),
    ([], ["nothing to show"]),
    (["--only-errors", "--cost"], ["--only-errors", "--preds"]),
])
def test_show_user_errors_exit_2_with_one_line(run_dir, args, parts):
    r = invoke(["show", "-f", run_dir] + args)
    assert r.exit_code == 2, r.output
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1, r.output
    for p in parts:
        assert p in lines[0]


def test_show_no_run_there(tmp_path):
    r = invoke(["show", "-f", str(tmp_path / "missing"), "--cost"])
    assert r.exit_code == 2 and "no such run directory" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = invoke(["show", "-f", str(empty), "--filters", "conv1"])
    assert r.exit_code == 2 and "no checkpoint" in r.output


def test_show_without_matplotlib_exits_2(run_dir, monkeypatch):
    for mod in list(sys.modules):
        if mod == "matplotlib" or mod.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r = invoke(["show", "-f", run_dir, "--cost"])
    assert r.exit_code == 2
    assert "matplotlib is not installed; install it with: pip install 'convnet[plot]'" in r.output
