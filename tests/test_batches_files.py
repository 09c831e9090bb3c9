"""The safe reader (restricted unpickler), atomic writes, BatchSet validation, and CIFAR-10 python batches."""
from __future__ import annotations

import errno
import io
import os
import pickle
import struct

import numpy as np
import pytest

from convnet_cli.data import batch_files as bf
from convnet_cli.data.batch_files import BatchSet, restricted_load
from convnet_cli.errors import DataError
from convnet_cli.fileio import write_pickle_atomic


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def test_foreign_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Evil(marker)}))
    with pytest.raises(DataError) as e:
        restricted_load(str(path))
    assert str(e.value) == (f"{path}: refused to unpickle 'os.system': batch files may only hold arrays, lists, "
                            "numbers and strings")
    assert not marker.exists()
    for obj, what in ((EvalEvil(), "builtins.eval"), (Evil, "test_batches_files.Evil")):
        with pytest.raises(DataError, match=f"refused to unpickle '[a-z_.]*{what.split('.')[-1]}'"):
            restricted_load(io.BytesIO(pickle.dumps(obj)), "x")
    # a protocol-2 bytes object may only be rebuilt with latin1, never with another codec
    sneaky = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00base64\x86R."
    with pytest.raises(DataError, match="encode"):
        restricted_load(io.BytesIO(sneaky), "x")


def test_foreign_meta_and_batch_in_a_batch_set(tmp_path, tiny_batches):
    import shutil

    out = tmp_path / "b"
    shutil.copytree(tiny_batches, out)
    marker = tmp_path / "pwned"
    (out / "data_batch_2").write_bytes(pickle.dumps({"data": Evil(marker), "labels": []}))
    bs = BatchSet(out)
    with pytest.raises(DataError, match="data_batch_2: refused to unpickle 'os.system'"):
        bs.load_batch(2)
    (out / "batches.meta").write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(DataError, match="batches.meta: refused to unpickle"):
        BatchSet(out)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_arrays_and_plain_values_load(protocol):
    obj = {"f": np.arange(12, dtype=np.float32).reshape(3, 4), "u": np.arange(5, dtype=np.uint8),
           "h": np.ones((2, 2), np.float16).T, "scalar": np.float64(2.5), "i": np.int32(7), "dt": np.dtype("<f4"),
           "l": [1, 2.5, "x", None, True, (1, 2)], "b": b"\x00\xff", "set": {1, 2}, "s": np.array(["ab", "c"]),
           "nested": {"k": [np.zeros(3, np.int64)]}, "c": 1 + 2j}
    back = restricted_load(io.BytesIO(pickle.dumps(obj, protocol=protocol)))
    assert back.keys() == obj.keys()
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(back[k], v)
            assert back[k].dtype == v.dtype
        elif k == "nested":
            np.testing.assert_array_equal(back[k]["k"][0], v["k"][0])
        else:
            assert back[k] == v and type(back[k]) is type(v)


def test_truncated_corrupt_and_missing_files(tmp_path, tiny_batches):
    import shutil

    out = tmp_path / "b"
    shutil.copytree(tiny_batches, out)
    blob = (out / "data_batch_1").read_bytes()
    (out / "data_batch_1").write_bytes(blob[: len(blob) // 2])
    bs = BatchSet(out)
    with pytest.raises(DataError, match=r"data_batch_1: truncated batch file .*re-create it with convnet make-batches"):
        bs.load_batch(1)
    (out / "data_batch_1").write_bytes(b"hello, not a pickle at all")
    with pytest.raises(DataError, match="data_batch_1: not a readable batch file"):
        bs.load_batch(1)
    with pytest.raises(DataError, match=r"data_batch_7: missing \(.* holds batches 1-2\)"):
        bs.load_batch(7)
    os.remove(out / "data_batch_2")
    with pytest.raises(DataError, match="test_range names batch 2, but data_batch_2 is missing"):
        BatchSet(out)
    os.remove(out / "batches.meta")
    with pytest.raises(DataError, match="batches.meta: missing"):
        BatchSet(out)
    with pytest.raises(DataError, match="no such batch folder"):
        BatchSet(tmp_path / "nowhere")


def test_wrong_shaped_and_mislabeled_batches(tmp_path, tiny_batches):
    import shutil

    out = tmp_path / "b"
    shutil.copytree(tiny_batches, out)
    bs = BatchSet(out)
    good = restricted_load(out / "data_batch_1")
    write_pickle_atomic(out / "data_batch_1", dict(good, data=np.zeros((100, 8), np.float32)))
    with pytest.raises(DataError) as e:
        bs.load_batch(1)
    assert "data has shape (100, 8)" in str(e.value) and "480 values per case" in str(e.value)
    assert "[1, 16, 30]" in str(e.value)
    write_pickle_atomic(out / "data_batch_1", dict(good, data=np.zeros((480, 8, 2), np.float32)))
    with pytest.raises(DataError, match="2-D numeric array"):
        bs.load_batch(1)
    write_pickle_atomic(out / "data_batch_1", dict(good, labels=[5] * 8))
    with pytest.raises(DataError, match="label 5 is outside 0..1"):
        bs.load_batch(1)
    write_pickle_atomic(out / "data_batch_1", [1, 2, 3])
    with pytest.raises(DataError, match="not a batch file"):
        bs.load_batch(1)
    meta = restricted_load(out / "batches.meta")
    write_pickle_atomic(out / "batches.meta", dict(meta, data_shape=[1, 16, 31]))
    with pytest.raises(DataError, match="num_vis 480 does not match data_shape"):
        BatchSet(out)
    write_pickle_atomic(out / "batches.meta", dict(meta, data_mean=np.zeros(7, np.float32)))
    with pytest.raises(DataError, match="data_mean holds 7 values, but num_vis is 480"):
        BatchSet(out)


def test_atomic_write_disk_full_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "data_batch_1"
    write_pickle_atomic(path, {"data": np.arange(3)})
    old = path.read_bytes()
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bf.os, "fsync", full)
    with pytest.raises(DataError) as e:
        write_pickle_atomic(path, {"data": np.arange(1000)})
    assert str(e.value).startswith(f"{path}: disk full")
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["data_batch_1"]          # the temp file is gone


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


# ---- CIFAR-10 python batches ------------------------------------------------------------------------

class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings (BINSTRING), as cPickle did for CIFAR-10."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _binstring(self, obj):
        b = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[str] = _binstring
    dispatch[bytes] = _binstring


def py2_pickle(obj) -> bytes:
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    return f.getvalue().replace(b"numpy._core.", b"numpy.core.")


@pytest.fixture
def cifar_dir(tmp_path):
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (tmp_path / "batches.meta").write_bytes(py2_pickle({"num_cases_per_batch": 6, "label_names": names,
                                                         "num_vis": 3072}))
    batches = {}
    for i, fname in enumerate(["data_batch_1", "data_batch_2", "test_batch"]):
        data = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=6).tolist()
        files = [f"img_{i}_{j}.png" for j in range(6)]
        (tmp_path / fname).write_bytes(py2_pickle({"batch_label": f"batch {i}", "labels": labels, "data": data,
                                                    "filenames": files}))
        batches[fname] = (data, labels, files)
    return tmp_path, batches, names


def test_cifar10_python_batches(cifar_dir):
    folder, batches, names = cifar_dir
    assert b"numpy.core.multiarray" in (folder / "data_batch_1").read_bytes()
    bs = BatchSet(folder)
    assert bs.label_names == names and bs.data_shape == (3, 32, 32) and bs.num_vis == 3072
    assert bs.batch_numbers == [1, 2, 3] and bs.train_range == [1, 2] and bs.test_range == [3]
    assert bs.features is None and bs.num_cases(1) == 6
    for num, fname in ((1, "data_batch_1"), (3, "test_batch")):
        x, y, fn = bs.load_batch(num)
        data, labels, files = batches[fname]
        assert x.shape == (6, 3072) and x.dtype == np.float32
        np.testing.assert_array_equal(x, data.astype(np.float32))
        assert y.tolist() == labels and fn == files
    train = np.concatenate([batches["data_batch_1"][0], batches["data_batch_2"][0]]).astype(np.float64)
    np.testing.assert_allclose(bs.data_mean[:, 0], train.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(bs.data_std[:, 0], train.std(axis=0), rtol=1e-5)
    assert bs.data_mean.shape == (3072, 1) and bs.data_std.dtype == np.float32


def test_cuda_convnet_style_cifar_with_mean_in_meta(tmp_path):
    """cuda-convnet's own CIFAR batches: data (3072, n) uint8, data_mean (3072, 1) float64 in the meta."""
    rng = np.random.default_rng(1)
    mean = rng.uniform(0, 255, size=(3072, 1))
    (tmp_path / "batches.meta").write_bytes(py2_pickle({"num_cases_per_batch": 4, "label_names": ["a", "b"],
                                                         "num_vis": 3072, "data_mean": mean}))
    for i in (1, 2):
        data = rng.integers(0, 256, size=(3072, 4), dtype=np.uint8)
        (tmp_path / f"data_batch_{i}").write_bytes(py2_pickle({"data": data, "labels": [0, 1, 1, 0]}))
    bs = BatchSet(tmp_path)
    np.testing.assert_allclose(bs.data_mean, mean.astype(np.float32))
    x, y, fn = bs.load_batch(2)
    np.testing.assert_array_equal(x, data.T.astype(np.float32))
    assert fn == [f"data_batch_2:{j}" for j in range(4)]
    assert bs.train_range == [1] and bs.test_range == [2]
