"""cuda-convnet batch files: a safe reader and `BatchSet` (one validated batch directory); the atomic writers
are in fileio.py.

Layout (cuda-convnet's, as `convnet make-batches` writes it): `data_batch_1 … data_batch_K`, each a
pickled dict with `data` (num_vis, n) — one case per column, the case's (C, H, W) array in C order —
`labels` (n ints) and `filenames` (n strings); and `batches.meta` with `label_names`, `num_vis`,
`data_shape`, `num_cases_per_batch`, `num_batches`, `train_range`/`test_range` (inclusive [first, last];
[] when empty), `data_mean`/`data_std` (float32 (num_vis, 1), training range only), `features` and
`skipped`.

Extras written by `convnet make-batches` and understood here:
- `batch_cases` in the meta: the number of cases in each batch file (list, batch 1 first).
- `--dtype uint8`: each batch file also holds `data_offset` and `data_scale` (floats); the stored bytes q
  mean `data_offset + data_scale * q` (per-batch min/max scaling). Readers undo it; the meta statistics
  are those of the de-quantized values.

CIFAR-10 "python version" batches read too: `data` (n, 3072) uint8 is transposed on read, a meta without
`data_shape` means [3, 32, 32], `test_batch` becomes batch number K+1 (after data_batch_1..K) and forms the
test range. A meta without `data_mean`/`data_std` (CIFAR-10's has neither) gets both computed over the
training range on first use: the per-pixel mean and the per-pixel (population) standard deviation.

Every pickle is read with `restricted_load`, which admits numpy arrays, numpy scalars and dtypes, and plain
containers, numbers and strings — never code.
"""
from __future__ import annotations

import os
import pickle
import re

import numpy as np

from convnet_cli.data.batch_set_swap import pending_swap
from convnet_cli.data.targets import ClassTargets, Targets, kind_of, read_targets
from convnet_cli.errors import DataError
from convnet_cli.fileio import open_error, special_file

META = "batches.meta"
_BATCH_RE = re.compile(r"^data_batch_(\d+)$")
CIFAR_TEST = "test_batch"

_REFUSED = "batch files may only hold arrays, lists, numbers and strings"
_TRUNCATED = "truncated batch file (ended early); re-create it with convnet make-batches"


# ---- the restricted unpickler ---------------------------------------------------------------------

def numpy_attr(candidates):
    """The first importable module.attr of `candidates` (numpy moved numpy.core to numpy._core in 2.0)."""
    import importlib

    for mod, name in candidates:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    return None


def latin1_encode(text, encoding="latin1", errors="strict"):
    # Protocol-2 pickles of bytes call _codecs.encode(str, 'latin1'); nothing else is let through.
    if str(encoding).lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refused to unpickle '_codecs.encode' with encoding {encoding!r}")
    return text.encode("latin1", errors)


def _allowed():
    core = ("numpy._core", "numpy.core")
    table = {}
    for short, attr in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")):
        obj = numpy_attr([(f"{c}.{short}", attr) for c in core])
        if obj is not None:
            for c in core:
                table[(f"{c}.{short}", attr)] = obj
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    table[("_codecs", "encode")] = latin1_encode
    import collections

    table[("collections", "OrderedDict")] = collections.OrderedDict
    for name in ("set", "frozenset", "complex", "bytearray"):
        table[("builtins", name)] = getattr(__import__("builtins"), name)
        table[("__builtin__", name)] = getattr(__import__("builtins"), name)
    return table


_ALLOWED = None


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed()
        obj = _ALLOWED.get((module, name))
        if obj is None:
            shown = "os" if module in ("posix", "nt") else module
            raise _Refused(f"{shown}.{name}")
        return obj


class _Refused(pickle.UnpicklingError):
    def __init__(self, what):
        super().__init__(what)
        self.what = what


def restricted_load(file_or_path, name: str | None = None, unpickler=None):
    """Unpickle a batch file or a meta file without running code.

    Admits numpy arrays, scalars and dtypes and plain containers/numbers/strings. Python 2 pickles
    (CIFAR-10) are read with encoding='latin1'. DataError, naming the file, for anything refused, truncated
    or corrupt. `unpickler`: a subclass of the restricted unpickler to use instead (see data/batch_labels.py).
    """
    if isinstance(file_or_path, (str, os.PathLike)):
        path = os.fspath(file_or_path)
        special = special_file(path)
        if special:   # opening a FIFO would block until a writer comes
            raise DataError(f"{path}: is {special}, not a batch file; remove it, or re-create the set with "
                            "convnet make-batches")
        try:
            with open(path, "rb") as f:
                return restricted_load(f, name or path, unpickler)
        except OSError as exc:
            raise open_error(path, exc, "batch file", "expected a batch file") from None
    f = file_or_path
    label = name or getattr(f, "name", None) or "<batch file>"
    try:
        return (unpickler or RestrictedUnpickler)(f, encoding="latin1").load()
    except _Refused as exc:
        raise DataError(f"{label}: refused to unpickle '{exc.what}': {_REFUSED}") from None
    except EOFError:
        raise DataError(f"{label}: {_TRUNCATED}") from None
    except MemoryError:
        raise DataError(f"{label}: reading it needs more memory than there is (the file claims an array larger "
                        "than memory: damaged, or not a batch file); re-create it with convnet make-batches") from None
    except Exception as exc:  # UnpicklingError, ValueError, TypeError ... from corrupt bytes
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in reason or "ran out of input" in reason.lower():
            raise DataError(f"{label}: {_TRUNCATED}") from None
        raise DataError(f"{label}: not a readable batch file (corrupt or truncated: {reason}); "
                        "re-create it with convnet make-batches") from None


def batch_path(batch_dir, i: int) -> str:
    return os.path.join(os.fspath(batch_dir), f"data_batch_{int(i)}")


def encode_batch(data, targets, filenames, dtype="float32"):
    """The dict of one batch file. data: (num_vis, n) float32; targets: the cases' data/targets.py Targets
    (or plain labels, one int per case); dtype: float32, float16 or uint8.

    Returns (batch dict, the de-quantized data as a reader will see it, float32).
    """
    data = np.asarray(data, dtype=np.float32)
    if not isinstance(targets, Targets):
        targets = ClassTargets(targets)
    out = {**targets.batch_entries(), "filenames": [str(s) for s in filenames]}
    if dtype == "float32":
        out["data"] = np.ascontiguousarray(data)
        seen = out["data"]
    elif dtype == "float16":
        big = float(np.abs(data).max()) if data.size else 0.0
        if big > float(np.finfo(np.float16).max):
            raise DataError(f"--dtype float16: feature values reach {big:.4g}, beyond float16's range (65504); "
                            "use --dtype float32 or a log kind (logmel, logspec)")
        out["data"] = np.ascontiguousarray(data.astype(np.float16))
        seen = out["data"].astype(np.float32)
    elif dtype == "uint8":
        lo = float(data.min()) if data.size else 0.0
        hi = float(data.max()) if data.size else 0.0
        scale = (hi - lo) / 255.0 if hi > lo else 1.0
        q = np.clip(np.rint((data - lo) / scale), 0, 255).astype(np.uint8)
        out["data"] = np.ascontiguousarray(q)
        out["data_offset"] = lo
        out["data_scale"] = scale
        seen = (np.float32(lo) + np.float32(scale) * q.astype(np.float32)).astype(np.float32)
    else:
        raise DataError(f"--dtype {dtype!r}: expected float32, float16 or uint8")
    return out, seen


# ---- reading a batch directory --------------------------------------------------------------------

def str_keys(d):
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _as_range(value, key, meta_path):
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 0:
        return []
    try:
        vals = [int(v) for v in value]
    except (TypeError, ValueError):
        raise DataError(f"{meta_path}: {key} {value!r} is not a [first, last] pair of batch numbers") from None
    if len(vals) == 2 and vals[0] <= vals[1]:
        return list(range(vals[0], vals[1] + 1))
    if len(vals) == 1:
        return vals
    raise DataError(f"{meta_path}: {key} {value!r} is not a [first, last] pair of batch numbers")


def _column(value, num_vis, key, meta_path):
    a = np.asarray(value, dtype=np.float32)
    if a.size != num_vis:
        raise DataError(f"{meta_path}: {key} holds {a.size} values, but num_vis is {num_vis}; "
                        "re-create the batches with convnet make-batches")
    return np.ascontiguousarray(a.reshape(num_vis, 1))


class BatchSet:
    """A batch directory, its meta checked once. See the module docstring for the formats accepted."""

    def __init__(self, batch_dir):
        self.batch_dir = os.fspath(batch_dir)
        if not os.path.isdir(self.batch_dir):
            raise DataError(f"{self.batch_dir}: no such batch folder; make one with: convnet make-batches AUDIO_DIR "
                            f"{self.batch_dir}")
        # A make-batches killed while moving a new set into place: read the new set from where each file is.
        self._swap = pending_swap(self.batch_dir) or {}
        self.meta_path = self._swap.get(META) or os.path.join(self.batch_dir, META)
        if not os.path.exists(self.meta_path):
            raise DataError(f"{self.meta_path}: missing; {self.batch_dir} is not a batch folder "
                            "(make one with convnet make-batches)")
        meta = restricted_load(self.meta_path)
        if not isinstance(meta, dict):
            raise DataError(f"{self.meta_path}: holds a {type(meta).__name__}, not the dict of a batches.meta; "
                            "re-create it with convnet make-batches")
        meta = str_keys(meta)
        self.meta = meta
        self._files = self._scan()

        names = meta.get("label_names", [])
        if not isinstance(names, (list, tuple)):
            raise DataError(f"{self.meta_path}: label_names must be a list of strings")
        self.label_names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]

        shape = meta.get("data_shape")
        num_vis = meta.get("num_vis")
        if shape is None:
            if num_vis is None or int(num_vis) == 3072:
                shape = [3, 32, 32]  # CIFAR-10
            else:
                raise DataError(f"{self.meta_path}: no data_shape, and num_vis {num_vis} is not CIFAR-10's 3072; "
                                "re-create the batches with convnet make-batches")
        try:
            shape = tuple(int(v) for v in shape)
        except (TypeError, ValueError):
            raise DataError(f"{self.meta_path}: data_shape {shape!r} is not [C, H, W]") from None
        if len(shape) != 3 or min(shape) < 1:
            raise DataError(f"{self.meta_path}: data_shape {list(shape)} is not [C, H, W] of positive sizes")
        self.data_shape = shape
        self.num_vis = int(np.prod(shape))
        if num_vis is not None and int(num_vis) != self.num_vis:
            raise DataError(f"{self.meta_path}: num_vis {num_vis} does not match data_shape {list(shape)} "
                            f"({self.num_vis}); re-create the batches with convnet make-batches")

        train = _as_range(meta.get("train_range"), "train_range", self.meta_path)
        test = _as_range(meta.get("test_range"), "test_range", self.meta_path)
        present = self.batch_numbers
        if train is None and test is None:
            if CIFAR_TEST in self._files.values():
                test = [n for n, f in self._files.items() if f == CIFAR_TEST]
                train = [n for n in present if n not in test]
            else:
                train, test = (present[:-1], present[-1:]) if len(present) > 1 else (present, [])
        elif train is None:
            train = [n for n in present if n not in test]
        elif test is None:
            test = [n for n in present if n not in train]
        for key, rng in (("train_range", train), ("test_range", test)):
            missing = [n for n in rng if n not in self._files]
            if missing:
                raise DataError(f"{self.meta_path}: {key} names batch {missing[0]}, but "
                                f"{os.path.basename(batch_path(self.batch_dir, missing[0]))} is missing from "
                                f"{self.batch_dir}; restore it or re-create the batches with convnet make-batches")
        self.train_range, self.test_range = list(train), list(test)

        self._mean = _column(meta["data_mean"], self.num_vis, "data_mean", self.meta_path) \
            if meta.get("data_mean") is not None else None
        self._std = _column(meta["data_std"], self.num_vis, "data_std", self.meta_path) \
            if meta.get("data_std") is not None else None
        feats = meta.get("features")
        self.features = dict(str_keys(feats)) if isinstance(feats, dict) else None
        sizes = meta.get("batch_cases")
        self._sizes = [int(v) for v in sizes] if isinstance(sizes, (list, tuple)) else None
        self.num_cases_per_batch = int(meta.get("num_cases_per_batch") or 0)
        # what each case is trained towards (data/targets.py): one class, or a set of classes (batch files
        # hold `targets` besides `labels`)
        self.targets_kind = kind_of(meta)
        self.multi_label = self.targets_kind.multi_label
        # windows of long recordings: {"duration": s, "hop": s} (ingest/windows.py WindowSpec), else None
        window = meta.get("window")
        self.window = dict(str_keys(window)) if isinstance(window, dict) else None

    def _scan(self) -> dict:
        files = {}
        listing = list(self._swap) if self._swap else os.listdir(self.batch_dir)
        for name in listing:
            m = _BATCH_RE.match(name)
            if m:
                files[int(m.group(1))] = name
        if CIFAR_TEST in listing:
            files[max(files, default=0) + 1] = CIFAR_TEST
        return dict(sorted(files.items()))

    # ---- properties ---------------------------------------------------------------------------
    @property
    def batch_numbers(self) -> list:
        return list(self._files)

    @property
    def data_mean(self):
        """(num_vis, 1) float32."""
        if self._mean is None:
            self._compute_stats()
        return self._mean

    @property
    def data_std(self):
        """(num_vis, 1) float32."""
        if self._std is None:
            self._compute_stats()
        return self._std

    def batch_file(self, i: int) -> str:
        name = self._files.get(int(i), f"data_batch_{int(i)}")
        return self._swap.get(name) or os.path.join(self.batch_dir, name)

    def num_cases(self, i: int) -> int:
        """Cases in batch i (from the meta when it says; else by reading the file)."""
        if self._sizes is not None and 1 <= i <= len(self._sizes):
            return self._sizes[i - 1]
        if self.num_cases_per_batch and self.meta.get("num_batches") is None:
            return self.num_cases_per_batch  # CIFAR-10: every batch holds num_cases_per_batch
        return len(self.load_batch(i)[1])

    def _compute_stats(self):
        """Per-feature mean and population std over the training range, in float64, one batch at a time."""
        count, mean, m2 = 0, np.zeros((self.num_vis,), np.float64), np.zeros((self.num_vis,), np.float64)
        for i in self.train_range or self.batch_numbers:
            x = self.load_batch(i)[0].astype(np.float64)
            n = x.shape[0]
            if n == 0:
                continue
            bm = x.mean(axis=0)
            bm2 = ((x - bm) ** 2).sum(axis=0)
            delta = bm - mean
            total = count + n
            mean = mean + delta * (n / total)
            m2 = m2 + bm2 + delta ** 2 * (count * n / total)
            count = total
        std = np.sqrt(m2 / max(count, 1))
        if self._mean is None:
            self._mean = mean.astype(np.float32).reshape(-1, 1)
        if self._std is None:
            self._std = std.astype(np.float32).reshape(-1, 1)

    # ---- one batch ----------------------------------------------------------------------------
    def load_batch(self, i: int):
        """Batch i -> (data float32 (n, num_vis) — one case per row, labels int64 (n,), filenames [str])."""
        x, scale, y, names = self.read_raw(i)
        if scale is not None:
            x = np.float32(scale[0]) + np.float32(scale[1]) * x.astype(np.float32)
        return np.ascontiguousarray(x, dtype=np.float32), y, names

    def read_raw(self, i: int):
        """Batch i as stored, without copying its data: (x, scale, labels int64 (n,), filenames).

        x: (n, num_vis) view in the stored dtype (a transposed view for column-per-case files);
        scale: (offset, scale) for uint8 data written with --dtype uint8, else None (values = offset + scale*x).
        labels: cuda-convnet's one int per case (see read_batch for the targets of multi-label batches).
        """
        x, scale, targets, names = self.read_batch(i)
        return x, scale, targets.labels, names

    def read_batch(self, i: int):
        """As read_raw, with the cases' targets (data/targets.py) in place of the labels:
        (x, scale, Targets, filenames)."""
        i = int(i)
        path = self.batch_file(i)
        if i not in self._files:
            have = self.batch_numbers
            listing = f"batches {have[0]}-{have[-1]}" if have else "no batch files"
            raise DataError(f"{path}: missing ({self.batch_dir} holds {listing}); restore it or re-create the "
                            "batches with convnet make-batches")
        d = restricted_load(path)
        if not isinstance(d, dict) or not any(k in (b"data", "data") for k in d):
            raise DataError(f"{path}: not a batch file (no 'data' entry); re-create it with convnet make-batches")
        d = str_keys(d)
        data = d["data"]
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.dtype.kind not in "fiu":
            shape = getattr(data, "shape", None)
            raise DataError(f"{path}: 'data' must be a 2-D numeric array, found "
                            f"{type(data).__name__}{'' if shape is None else ' of shape ' + str(shape)}; "
                            "re-create it with convnet make-batches")
        labels = d.get("labels")
        n_labels = None if labels is None else len(labels)
        nv = self.num_vis
        rows_fit = data.shape[1] == nv and (n_labels is None or data.shape[0] == n_labels)
        cols_fit = data.shape[0] == nv and (n_labels is None or data.shape[1] == n_labels)
        if cols_fit and rows_fit:
            cols_fit = "batch_label" not in d  # square and ambiguous: CIFAR's files are the row-major ones
        if cols_fit:
            x = data.T
        elif rows_fit:
            x = data
        else:
            raise DataError(
                f"{path}: data has shape {tuple(data.shape)}, but batches.meta says {nv} values per case "
                f"(data_shape {list(self.data_shape)}) and the file has "
                f"{'no' if n_labels is None else n_labels} labels; this file does not belong to {self.batch_dir} — "
                "re-create the batches with convnet make-batches")
        n = x.shape[0]
        scale = None
        if "data_scale" in d:
            try:
                scale = (float(d.get("data_offset", 0.0)), float(d["data_scale"]))
            except (TypeError, ValueError):
                raise DataError(f"{path}: data_offset/data_scale must be numbers; re-create it with "
                                "convnet make-batches") from None
        targets = read_targets(d, n, len(self.label_names), self.multi_label, path)
        names = d.get("filenames")
        if names is None:
            names = [f"{os.path.basename(path)}:{j}" for j in range(n)]
        names = [s.decode("latin1") if isinstance(s, bytes) else str(s) for s in names]
        if len(names) != n:
            raise DataError(f"{path}: {len(names)} filenames for {n} cases; re-create it with convnet make-batches")
        return x, scale, targets, names

    def __repr__(self):
        return f"BatchSet({self.batch_dir!r}, batches={self.batch_numbers}, shape={self.data_shape})"
