"""A batch file's labels, and the shape and dtype of its data, without materialising the data.

`convnet info` counts cases per class over a whole batch folder. A batch file is one pickle whose `data`
array is nearly all of its bytes; `restricted_load` reads those bytes and builds the array from them, which
costs a read of the whole file and memory for the largest batch. Here the same restricted unpickler (the
same allow-list, the same one-line errors for refused, truncated or corrupt files) runs with two changes:

1. The file object it reads from *seeks over* every payload of SKIP_BYTES or more instead of reading it.
   pickle writes the raw bytes of a big array (protocol 3+: BINBYTES/BYTEARRAY8) outside its 64 KiB
   frames and fetches them with one readinto() into a fresh buffer; that buffer is never written, so its
   pages never become resident, and the disk is not read. A file that ends inside a payload still reads
   as truncated (the seek stops at the end of the file and reports the short count).
2. numpy's reconstructors are replaced by ones that keep only the shape and dtype of a big array (an
   `ArrayInfo`) and drop the buffer; arrays under SKIP_BYTES (labels stored as an array, scale factors)
   are built for real.

Python-2 pickles (CIFAR-10's BINSTRING) and Python-3 protocol-2 pickles (bytes as a unicode string passed
to `_codecs.encode`) fetch their payload with read(); it is seeked over too (read() returns zeros), but the
unpickler decodes those zeros into a string: there the payload costs one transient string of its size
(not read from disk, no array built, nothing kept).

Measured by benchmarks/bench_info.py (numbers in docs/PERFORMANCE.md, "convnet info"): the labels of four 64 MB
float32 batch files (protocol 5, as make-batches writes) in 2-5 ms, 0.3 MB read and under 1 MiB of peak
memory, where `restricted_load` takes ~200 ms, reads all 256 MB and peaks 61 MiB higher.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np

from convnet_cli.data import batch_files
from convnet_cli.errors import DataError

# Payloads (and arrays) of this many bytes or more are skipped. Labels of a 100k-case batch stored as an
# int64 array are 800 kB: still read. pickle frames hold at most ~64 KiB, so nothing this big is framed.
SKIP_BYTES = 1 << 20


@dataclass(frozen=True)
class ArrayInfo:
    """What a skipped array was: its shape and dtype, no data."""

    shape: tuple
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


@dataclass
class BatchLabels:
    """One batch file, read without its data. labels: int64 (n,) (-1 = unlabelled), or None when the
    file holds no labels; data: the `data` entry as an ArrayInfo (or a small real array); targets: a
    multi-label file's `targets` as stored (classes, cases), unchecked (data/targets.py read_targets checks
    them), or None."""

    path: str
    labels: np.ndarray | None
    data_shape: tuple
    data_dtype: np.dtype
    has_scale: bool  # uint8 data written with --dtype uint8 (data_offset/data_scale)
    targets: object = None


class _Skipped:
    """Stands for a big string payload that was not decoded."""

    def __init__(self, n):
        self.n = n


class _SkippingReader:
    """A read-only file object that seeks over large reads instead of performing them."""

    def __init__(self, f, skip_bytes: int):
        self._f = f
        self._skip = skip_bytes
        self.name = getattr(f, "name", None)
        try:
            self._size = os.fstat(f.fileno()).st_size if f.seekable() else None
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._size = None
        if hasattr(f, "peek"):
            self.peek = f.peek  # lets the unpickler prefetch small opcodes (protocol 2 has no frames)

    def _jump(self, n: int) -> int:
        step = max(0, min(n, self._size - self._f.tell()))
        self._f.seek(step, os.SEEK_CUR)
        return step

    def read(self, n=-1):
        if self._size is not None and n is not None and n >= self._skip:
            # calloc'ed zeros: never touched unless the unpickler decodes them (Python-2 strings)
            return bytes(self._jump(n))
        return self._f.read(n)

    def readinto(self, buf):
        n = memoryview(buf).nbytes
        if self._size is not None and n >= self._skip:
            return self._jump(n)
        return self._f.readinto(buf)

    def readline(self):
        return self._f.readline()


def _frombuffer_info(buf, dtype, shape, order="C"):
    """Protocol 5's array reconstructor, keeping only shape and dtype of a big array."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    info = ArrayInfo(shape, dtype)
    if info.nbytes < SKIP_BYTES:
        return _REAL["frombuffer"](buf, dtype, shape, order)
    return info


class _PendingArray:
    """Protocol 0-4's ndarray: `_reconstruct` makes this, BUILD hands it the state (shape, dtype, bytes)."""

    def __init__(self):
        self.value = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise ValueError("not the state of a numpy array")
        shape, dtype = state[-4], state[-3]
        if not isinstance(dtype, np.dtype):
            raise ValueError("not the state of a numpy array")
        info = ArrayInfo(tuple(int(s) for s in shape), dtype)
        if info.nbytes < SKIP_BYTES and not isinstance(state[-1], _Skipped):
            a = _REAL["reconstruct"](np.ndarray, (0,), b"b")
            a.__setstate__(state)
            self.value = a
        else:
            self.value = info


def _reconstruct_info(cls, shape, typecode):
    return _PendingArray()


def _encode_info(text, encoding="latin1", errors="strict"):
    if len(text) >= SKIP_BYTES:
        batch_files.latin1_encode("", encoding, errors)  # the same check of the encoding
        return _Skipped(len(text))
    return batch_files.latin1_encode(text, encoding, errors)


_REAL = {}   # numpy's reconstructors, to build the small arrays
_SWAP = None  # id(allowed object) -> its stand-in


def _swap() -> dict:
    global _SWAP
    if _SWAP is None:
        core = ("numpy._core", "numpy.core")
        frombuffer = batch_files.numpy_attr([(f"{c}.numeric", "_frombuffer") for c in core])
        reconstruct = batch_files.numpy_attr([(f"{c}.multiarray", "_reconstruct") for c in core])
        _REAL.update(frombuffer=frombuffer, reconstruct=reconstruct)
        _SWAP = {id(frombuffer): _frombuffer_info, id(reconstruct): _reconstruct_info,
                 id(batch_files.latin1_encode): _encode_info}
    return _SWAP


class _LabelsUnpickler(batch_files.RestrictedUnpickler):
    def __init__(self, file, **kw):
        super().__init__(_SkippingReader(file, SKIP_BYTES), **kw)
        self._swap = _swap()

    def find_class(self, module, name):
        obj = super().find_class(module, name)  # refuses exactly what restricted_load refuses
        return self._swap.get(id(obj), obj)


def _resolve(value):
    return value.value if isinstance(value, _PendingArray) else value


def load_without_data(path):
    """restricted_load(path), except that arrays of SKIP_BYTES or more come back as ArrayInfo (top level)."""
    d = batch_files.restricted_load(path, unpickler=_LabelsUnpickler)
    if isinstance(d, dict):
        return {k: _resolve(v) for k, v in d.items()}
    return _resolve(d)


def read_batch_labels(path) -> BatchLabels:
    """Labels and data shape/dtype of one batch file. DataError (one line) for a file that is not one."""
    path = os.fspath(path)
    d = load_without_data(path)
    if not isinstance(d, dict) or not any(k in (b"data", "data") for k in d):
        raise DataError(f"{path}: not a batch file (no 'data' entry); re-create it with convnet make-batches")
    d = batch_files.str_keys(d)
    data = d["data"]
    if not isinstance(data, (np.ndarray, ArrayInfo)) or data.ndim != 2 or data.dtype.kind not in "fiu":
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: 'data' must be a 2-D numeric array, found {type(data).__name__}"
                        f"{'' if shape is None else ' of shape ' + str(tuple(shape))}; "
                        "re-create it with convnet make-batches")
    labels = d.get("labels")
    if labels is not None:
        if isinstance(labels, ArrayInfo):  # labels in an array of over 1 MiB: read this file in full
            labels = batch_files.str_keys(batch_files.restricted_load(path))["labels"]
        try:
            labels = np.asarray(labels).astype(np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise DataError(f"{path}: labels must be integers; re-create it with convnet make-batches") from None
    targets = d.get("targets")
    if isinstance(targets, ArrayInfo):  # targets of over 1 MiB (many classes and cases): read this file in full
        targets = batch_files.str_keys(batch_files.restricted_load(path))["targets"]
    return BatchLabels(path, labels, tuple(int(s) for s in data.shape), np.dtype(data.dtype), "data_scale" in d,
                       targets)
