"""Winograd F(2x2, 3x3) convolution on NHWC arrays (NumPy), forward and both backward passes, and the
per-shape choice between it and the im2col + GEMM path of conv.py, made by measurement.

For one 4x4 tile d of the (padded) input and a 3x3 filter g, the 2x2 outputs are

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* element-wise, over the 16 points of the 4x4 tile)

and over channels the 16 element-wise products become 16 GEMMs, M[a, b] = V[a, b] @ U[a, b], with
V = B^T d B of every tile (tiles, C) and U = G g G^T (C, F). That is 16 multiply-adds per 4 outputs
instead of 36: 2.25x fewer FLOPs in the GEMMs, paid for by the transforms (element-wise passes over
4x the input and output). Tiles start every 2 pixels and overlap by 2.

Backward (dM = A dY A^T, the output transform's adjoint):
    dU[a, b] = V[a, b]^T @ dM[a, b]      (C, F), summed over tiles; dW = G^T dU G
    dV[a, b] = dM[a, b] @ U[a, b]^T      (tiles, C); dx = the input transform's adjoint of dV, added
                                          into the (overlapping) tiles of the padded input.
Everything runs in chunks of cases whose transformed tiles stay in the cache (WINO_CHUNK_BYTES), in a
fixed order: deterministic. The chunks run on convnet's threads (cpu_threads.py), each with its own work
arrays; dU is summed per fixed block of chunks, in block order.

Which path a conv layer takes is decided per shape (input, filters, padding, dtype, direction; not the
batch size, since both paths work in chunks of cases) by timing both on the real arrays the first time
that shape is seen, and cached for the process. Layers
with little work (SMALL_FLOPS) are not timed: they take im2col + GEMM. CONVNET_CONV_ALGO=direct or
=winograd forces one path for every eligible layer (tests, reproducing a run exactly); the timed choice
can differ between processes on a loaded machine, and the two paths round differently (both within
float32 tolerance of the exact result). The choices made are kept in a small JSON file (see `cache_path`),
so that a later process on the same machine (a resumed run) takes the same paths. The file is a
speed-up only: anything but a regular file of at most CACHE_MAX_BYTES holding a JSON mapping is ignored
with one warning, and what is written stays within those bounds.
"""
from __future__ import annotations

import json
import os
import platform
import stat
import sys
import time

import numpy as np

from convnet_cli.fileio import write_text_atomic
from convnet_cli.layers.cpu_threads import (blocks, chunk_bounds, compute_threads, ordered_sum, parallel_map,
                                            parallel_threads)

# Transformed tiles (V) of one chunk of cases are kept around this size.
WINO_CHUNK_BYTES = 4 << 20
# Forward passes below this many direct FLOPs are not worth timing: they take im2col + GEMM.
SMALL_FLOPS = 200e6
ALGOS = ("direct", "winograd")

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def eligible(geo) -> bool:
    """A conv whose Winograd F(2x2, 3x3) form exists here: 3x3 filters, stride 1, one group, padding <= 2,
    and more than a few input channels (with one channel the 16 GEMMs are GEMVs)."""
    return (geo.fh == 3 and geo.fw == 3 and geo.sh == 1 and geo.sw == 1 and geo.g == 1
            and geo.ph <= 2 and geo.pw <= 2 and geo.c >= 4)


# -- transforms -------------------------------------------------------------------------------------------
def filter_transform(w33):
    """w33 (3, 3, C, F) in (row, column, channel, filter) order -> U (16, C, F) = G g G^T per (c, f)."""
    g = _G.astype(w33.dtype)
    return np.einsum("ai,ijcf,bj->abcf", g, w33, g, optimize=True).reshape(16, *w33.shape[2:]).copy()


def filter_transform_adjoint(du):
    """dU (16, C, F) -> dW (3, 3, C, F): the gradient of filter_transform."""
    g = _G.astype(du.dtype)
    return np.einsum("ai,abcf,bj->ijcf", g, du.reshape(4, 4, *du.shape[1:]), g, optimize=True)


def _tiles(ho, wo):
    return (ho + 1) // 2, (wo + 1) // 2


class _Buffers:
    """Work arrays of one chunk size, allocated once per call."""

    def __init__(self, nc, th, tw, c, f, dtype):
        wp = 2 * tw + 2
        self.pad = np.zeros((nc, 2 * th + 2, wp, c), dtype=dtype)
        self.rows = np.empty((4, nc, th, wp, c), dtype=dtype)
        self.v = np.empty((16, nc * th * tw, c), dtype=dtype)
        self.m = np.empty((16, nc * th * tw, f), dtype=dtype)
        self.t = np.empty((2, 4, nc, th, tw, f), dtype=dtype)


def _input_transform(xpad, v, rows):
    """xpad (n, 2th+2, 2tw+2, C) -> v[a*4 + b] = (B^T d B)[a, b] for every tile, as (n*th*tw, C) rows.
    rows: (4, n, th, 2tw+2, C) work space."""
    n, hp, wp, c = xpad.shape
    th, tw = (hp - 2) // 2, (wp - 2) // 2
    r = [xpad[:, a:a + 2 * th:2] for a in range(4)]  # input rows 2t + a of each tile row t
    s = rows[:, :n]
    np.subtract(r[0], r[2], out=s[0])
    np.add(r[1], r[2], out=s[1])
    np.subtract(r[2], r[1], out=s[2])
    np.subtract(r[1], r[3], out=s[3])
    v6 = v.reshape(16, n, th, tw, c)
    for a in range(4):
        col = [s[a][:, :, b:b + 2 * tw:2] for b in range(4)]
        np.subtract(col[0], col[2], out=v6[4 * a])
        np.add(col[1], col[2], out=v6[4 * a + 1])
        np.subtract(col[2], col[1], out=v6[4 * a + 2])
        np.subtract(col[1], col[3], out=v6[4 * a + 3])


def _add_bt_adjoint(dst, d):
    """dst[b] += (B^T)^T d along one axis, the adjoint of V_0 = s0 - s2, V_1 = s1 + s2, V_2 = s2 - s1,
    V_3 = s1 - s3: dst, d lists (or leading axes) of 4 arrays of one shape."""
    dst[0] += d[0]
    dst[1] += d[1]
    dst[1] -= d[2]
    dst[1] += d[3]
    dst[2] -= d[0]
    dst[2] += d[1]
    dst[2] += d[2]
    dst[3] -= d[3]


def _input_transform_adjoint(dv, dxpad, rows):
    """The transpose of _input_transform: dxpad (n, 2th+2, 2tw+2, C), zeroed by the caller, += B dV B^T
    of every tile, added at the tile's place (tiles overlap by 2). rows: work space as there."""
    n, hp, wp, c = dxpad.shape
    th, tw = (hp - 2) // 2, (wp - 2) // 2
    dv6 = dv.reshape(4, 4, n, th, tw, c)
    ds = rows[:, :n]
    ds[...] = 0
    for a in range(4):  # columns s_b of each row a of the tiles, then the rows
        _add_bt_adjoint([ds[a][:, :, b:b + 2 * tw:2] for b in range(4)], dv6[a])
    _add_bt_adjoint([dxpad[:, a:a + 2 * th:2] for a in range(4)], ds)


def _output_transform(m, t, out_full):
    """m (16, n*th*tw, F) -> out_full (n, 2th, 2tw, F) = A^T M A of every tile. t: (2, 4, n, th, tw, F)."""
    n, h2, w2, f = out_full.shape
    th, tw = h2 // 2, w2 // 2
    m6 = m.reshape(4, 4, n, th, tw, f)
    t = t[:, :, :n]
    np.add(m6[0], m6[1], out=t[0])
    t[0] += m6[2]
    np.subtract(m6[1], m6[2], out=t[1])
    t[1] -= m6[3]
    o6 = out_full.reshape(n, th, 2, tw, 2, f)
    for u in range(2):
        tu = t[u]
        ou0, ou1 = o6[:, :, u, :, 0, :], o6[:, :, u, :, 1, :]
        np.add(tu[0], tu[1], out=ou0)
        ou0 += tu[2]
        np.subtract(tu[1], tu[2], out=ou1)
        ou1 -= tu[3]


def _output_transform_adjoint(dy_full, dm, t):
    """The transpose of _output_transform: dy_full (n, 2th, 2tw, F) -> dm (16, n*th*tw, F) = A dY A^T."""
    n, h2, w2, f = dy_full.shape
    th, tw = h2 // 2, w2 // 2
    y6 = dy_full.reshape(n, th, 2, tw, 2, f)
    dm6 = dm.reshape(4, 4, n, th, tw, f)
    r = t[:, :, :n]  # r[v][a]: row-combined, for output column v
    for v in range(2):
        y0, y1 = y6[:, :, 0, :, v, :], y6[:, :, 1, :, v, :]
        np.copyto(r[v][0], y0)
        np.add(y0, y1, out=r[v][1])
        np.subtract(y0, y1, out=r[v][2])
        np.negative(y1, out=r[v][3])
    for a in range(4):
        r0, r1 = r[0][a], r[1][a]
        np.copyto(dm6[a, 0], r0)
        np.add(r0, r1, out=dm6[a, 1])
        np.subtract(r0, r1, out=dm6[a, 2])
        np.negative(r1, out=dm6[a, 3])


def _chunk_cases(n, th, tw, c, f, itemsize):
    per_case = 16 * th * tw * max(c, f) * itemsize
    return max(1, min(n, WINO_CHUNK_BYTES // max(per_case, 1)))


# -- forward / backward of a conv layer ------------------------------------------------------------------
def conv_forward(x, w33, bias, ph, pw, out=None, post=None):
    """x (N, H, W, C), w33 (3, 3, C, F), bias (F,), (Ho, Wo, F) or None -> out (N, Ho, Wo, F), stride 1.
    post: None, or a function applied in place to each chunk of cases of out once it is done (a relu)."""
    n, h, w, c = x.shape
    f = w33.shape[3]
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    th, tw = _tiles(ho, wo)
    if out is None:
        out = np.empty((n, ho, wo, f), dtype=x.dtype)
    u = filter_transform(w33)
    nc = _chunk_cases(n, th, tw, c, f, x.dtype.itemsize)
    bounds = chunk_bounds(n, nc)
    threads = parallel_threads(np, len(bounds))
    exact = ho == 2 * th and wo == 2 * tw
    work = [(_Buffers(nc, th, tw, c, f, x.dtype), None if exact else np.empty((nc, 2 * th, 2 * tw, f), dtype=x.dtype))
            for _ in range(threads)]

    def chunk(worker, bound):
        n0, n1 = bound
        bufs, full = work[worker]
        k = n1 - n0
        xpad = bufs.pad[:k]
        xpad[:, ph:ph + h, pw:pw + w] = x[n0:n1]  # the borders stay zero from allocation
        v = bufs.v[:, :k * th * tw]
        m = bufs.m[:, :k * th * tw]
        _input_transform(xpad, v, bufs.rows)
        np.matmul(v, u, out=m)
        dst = out[n0:n1] if exact else full[:k]
        _output_transform(m, bufs.t, dst)
        if not exact:
            out[n0:n1] = dst[:, :ho, :wo]
        if bias is not None:
            out[n0:n1] += bias
        if post is not None:
            post(out[n0:n1])

    parallel_map(chunk, bounds, threads)
    return out


def conv_backward(x, dout, w33, ph, pw, want_dx=True):
    """(dW (3, 3, C, F), dx (N, H, W, C) or None) of conv_forward, for dout (N, Ho, Wo, F)."""
    n, h, w, c = x.shape
    f = w33.shape[3]
    ho, wo = dout.shape[1:3]
    th, tw = _tiles(ho, wo)
    u = filter_transform(w33)
    ut = u.transpose(0, 2, 1).copy() if want_dx else None  # (16, F, C)
    nc = _chunk_cases(n, th, tw, c, f, x.dtype.itemsize)
    blks = blocks(chunk_bounds(n, nc))
    threads = parallel_threads(np, len(blks))
    exact = ho == 2 * th and wo == 2 * tw
    work = []
    for _ in range(threads):
        bufs = _Buffers(nc, th, tw, c, f, x.dtype)
        work.append((bufs, None if exact else np.zeros((nc, 2 * th, 2 * tw, f), dtype=x.dtype),
                     np.empty_like(bufs.pad) if want_dx else None))
    dx = np.empty(x.shape, dtype=x.dtype) if want_dx else None

    def block(worker, blk):  # dU of a block of chunks; dx written in place (its cases only)
        bufs, dy_full, dxpad = work[worker]
        du = np.zeros((16, c, f), dtype=x.dtype)
        for n0, n1 in blk:
            k = n1 - n0
            rows = k * th * tw
            xpad = bufs.pad[:k]
            xpad[:, ph:ph + h, pw:pw + w] = x[n0:n1]
            v = bufs.v[:, :rows]
            dm = bufs.m[:, :rows]
            _input_transform(xpad, v, bufs.rows)
            if exact:
                dy = dout[n0:n1]
            else:
                dy = dy_full[:k]
                dy[:, :ho, :wo] = dout[n0:n1]  # the rest stays zero
            _output_transform_adjoint(dy, dm, bufs.t)
            du += np.matmul(v.transpose(0, 2, 1), dm)
            if want_dx:
                np.matmul(dm, ut, out=v)  # dV, in the place of V (no longer needed)
                dpad = dxpad[:k]
                dpad[...] = 0
                _input_transform_adjoint(v, dpad, bufs.rows)
                dx[n0:n1] = dpad[:, ph:ph + h, pw:pw + w]
        return du

    du = ordered_sum(parallel_map(block, blks, threads))
    return filter_transform_adjoint(du), dx


# -- choosing a path per shape, by measurement ---------------------------------------------------------------
_CHOICES: dict = {}
_LOADED = [False]


def forced() -> str | None:
    v = os.environ.get("CONVNET_CONV_ALGO", "").strip().lower()
    return v if v in ALGOS else None


def cache_path() -> str:
    """$CONVNET_CACHE_DIR/conv_algos.json, else $XDG_CACHE_HOME/convnet/..., else ~/.cache/convnet/..."""
    base = os.environ.get("CONVNET_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "convnet")
    return os.path.join(base, "conv_algos.json")


def _machine() -> str:
    # "pool": choices timed since the conv chunks run on convnet's own threads (cpu_threads.py); ones
    # timed before, with BLAS's threads, do not carry over
    return (f"{platform.machine()}|{platform.processor()}|{os.cpu_count()}cpu|{compute_threads()}thr|pool|"
            f"numpy{np.__version__}")


# The cache is a speed-up, never worth a failure: a file that is not a regular file of at most this size
# holding a JSON mapping is ignored with one warning; writes keep it bounded (entries per machine, machines).
CACHE_MAX_BYTES = 1 << 20
CACHE_MAX_ENTRIES = 512
CACHE_MAX_MACHINES = 8
_WARNED = [False]


def _warn_cache(path: str, why: str):
    if _WARNED[0]:
        return
    _WARNED[0] = True
    sys.stderr.write(f"convnet: warning: {path}: {why}; ignored (it only remembers which convolution path is "
                     f"faster here; remove it with: rm '{path}', it is made again as needed)\n")


def _read_cache(path: str):
    """(mapping, writable): the cache file's JSON mapping ({} when there is none), and whether a save may
    replace the file (False for anything but a regular file: a FIFO, a device, a folder)."""
    try:
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return {}, True
    except IsADirectoryError:
        _warn_cache(path, "is a folder, not a regular file")
        return {}, False
    except OSError as exc:
        _warn_cache(path, f"cannot be read ({exc.strerror or exc})")
        return {}, False
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            _warn_cache(path, "is not a regular file")
            return {}, False
        if st.st_size > CACHE_MAX_BYTES:
            _warn_cache(path, f"is larger than {CACHE_MAX_BYTES >> 20} MB ({st.st_size:,} bytes)")
            return {}, True
        try:
            raw = fh.read(CACHE_MAX_BYTES + 1)
        except OSError as exc:
            _warn_cache(path, f"cannot be read ({exc.strerror or exc})")
            return {}, True
    if len(raw) > CACHE_MAX_BYTES:
        _warn_cache(path, f"is larger than {CACHE_MAX_BYTES >> 20} MB")
        return {}, True
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        _warn_cache(path, "is not valid JSON (or nested too deep)")
        return {}, True
    if not isinstance(data, dict):
        _warn_cache(path, "does not hold a JSON mapping")
        return {}, True
    return data, True


def _load():
    if _LOADED[0]:
        return
    _LOADED[0] = True
    data, _ = _read_cache(cache_path())
    mine = data.get(_machine())
    if isinstance(mine, dict):
        for key, algo in mine.items():
            if isinstance(key, str) and algo in ALGOS:
                _CHOICES.setdefault(key, algo)


def _save():
    try:
        path = cache_path()
        data, writable = _read_cache(path)
        if not writable:
            return
        mine = _machine()
        others = sorted(k for k, v in data.items() if k != mine and isinstance(v, dict))
        kept = {k: data[k] for k in others[:CACHE_MAX_MACHINES - 1]}
        choices = list(_CHOICES.items())[-CACHE_MAX_ENTRIES:]   # the latest shapes of this process
        kept[mine] = dict(sorted(choices))
        text = json.dumps(kept, indent=1, sort_keys=True) + "\n"
        while len(text.encode("utf-8")) > CACHE_MAX_BYTES and len(kept) > 1:
            kept.pop(next(k for k in kept if k != mine))
            text = json.dumps(kept, indent=1, sort_keys=True) + "\n"
        if len(text.encode("utf-8")) > CACHE_MAX_BYTES:
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_text_atomic(path, text)
    except Exception:  # a read-only home or the like: the choice stays for this process
        pass


def choose(key: str, flops: float, runs: dict, record: dict | None = None):
    """The path for `key`: forced (CONVNET_CONV_ALGO), the run's own record, this machine's cache file,
    'direct' for little work, or timed now.

    runs: {algo: zero-argument function computing that path's result}. record: the choices of a training run
    ({key: algo}, kept in its checkpoints, layers/base.py Context.algos); the path taken is written into it,
    so that a resume takes the same paths, and computes the same bits, on any machine and whatever its cache
    file says. Returns (algo, result or None): when the paths were timed, the chosen one's last result comes
    back so that it is not computed again."""
    algo = forced()
    if algo is not None:
        return algo, None
    if record is not None and record.get(key) in ALGOS:
        return record[key], None
    algo, result = _choose_here(key, flops, runs)
    if record is not None:
        record[key] = algo
    return algo, result


def _choose_here(key: str, flops: float, runs: dict):
    """The path this machine prefers for `key` (cached, 'direct' for little work, or timed now)."""
    _load()
    if key in _CHOICES:
        return _CHOICES[key], None
    if flops < SMALL_FLOPS:
        _CHOICES[key] = "direct"
        return "direct", None
    best, results = {}, {}
    for _ in range(2):  # twice each, alternating; the faster of the two runs counts
        for name, fn in runs.items():
            t = time.perf_counter()
            results[name] = fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
    algo = min(best, key=best.get)
    _CHOICES[key] = algo
    _save()
    return algo, results[algo]


def choices() -> dict:
    """The decisions made so far in this process (and loaded from the cache file): {shape key: algo}."""
    return dict(_CHOICES)
