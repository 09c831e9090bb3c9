"""Fused LSTM and GRU cells compiled by numba: the optional `jit` extra (`pip install -e '.[jit]'`).

Each kernel does one time step's whole element-wise cell work (the add of the recurrent projection, the
gate activations, the state update) in one pass over the (N, G*O) gate block, where the NumPy twins in
recurrent.py (the reference) take about 15 array passes. numba's own `tanh` is a scalar libm call per element
(slower than NumPy's vectorised one), so the kernels use a rational approximation LLVM vectorises: the
[13/6] odd/even polynomial ratio on [-7.9053, 7.9053] that Eigen uses for float32 tanh, within 3.2e-7 of
the exact tanh (NumPy's float32 tanh: 6e-8). The results are thus close to the NumPy path's, not equal;
a training run records which path its recurrent cells took (`CELL_KEY` in the run's `algos`, kept in its
checkpoints) so that a resume takes the same one and computes the same bits.

Used only for float32 NumPy arrays (float64 gradient checks and CuPy keep their own paths), when numba
imports and `CONVNET_JIT` is not `0`. Compiled on first use (a few seconds; numba caches the machine code
beside this file, or in its user cache where that is read-only).
"""
from __future__ import annotations

import functools
import os
import sys

CELL_KEY = "recurrent cell"  # the key of the run's algos record: "jit" or "numpy"
PATHS = ("jit", "numpy")

_KERNELS: dict = {}
_STATE = {"tried": False, "ok": False, "why": ""}


def _compile():
    """Build the kernels once; False (and the reason in _STATE) when numba is missing or fails."""
    if _STATE["tried"]:
        return _STATE["ok"]
    _STATE["tried"] = True
    try:
        from convnet_cli.layers import recurrent_numba as k
    except Exception as exc:  # numba not installed, or a broken install: the NumPy path runs
        _STATE["why"] = f"numba does not import ({type(exc).__name__}: {exc})"
        return False
    _KERNELS.update(lstm_fwd=k.lstm_fwd, lstm_bwd=k.lstm_bwd, gru_fwd=k.gru_fwd, gru_bwd=k.gru_bwd)
    _STATE["ok"] = True
    return True


def available() -> bool:
    """numba imports and the kernels were built (their machine code is compiled at the first call)."""
    return _compile()


def unavailable_reason() -> str:
    _compile()
    return _STATE["why"]


def disabled() -> bool:
    """CONVNET_JIT=0 (or off/no/false) turns the JIT cells off."""
    return os.environ.get("CONVNET_JIT", "").strip().lower() in ("0", "off", "no", "false")


_WARNED = [False]


def choose(record: dict | None) -> str:
    """'jit' or 'numpy' for this run's float32 CPU recurrent cells: CONVNET_JIT=0 -> numpy; else the run's
    record (a resume takes the path its checkpoint says); else jit when numba is there. A record saying jit
    on a machine without numba runs the NumPy path, with one warning that the resumed run's numbers differ
    from the original's by float32 rounding."""
    if disabled():
        path = "numpy"
    elif record is not None and record.get(CELL_KEY) in PATHS:
        path = record[CELL_KEY]
        if path == "jit" and not available():
            if not _WARNED[0]:
                _WARNED[0] = True
                sys.stderr.write("convnet: warning: this run's recurrent cells ran numba's JIT path, but "
                                 f"{unavailable_reason()}; resuming on the NumPy path, whose results differ by "
                                 "float32 rounding (install the jit extra: pip install 'convnet[jit]')\n")
            return "numpy"
        return path
    else:
        path = "jit" if available() else "numpy"
    if record is not None:
        record[CELL_KEY] = path
    return path


def lstm_forward(pre, rec, c_prev, h, c):
    """In place: pre (N, 4O) += rec (when not None), then its gates replace it; h, c (N, O) written."""
    scale, shift = _lstm_consts(pre.shape[1] // 4)
    _KERNELS["lstm_fwd"](pre, pre if rec is None else rec, rec is not None, scale, shift, c_prev, h, c)


@functools.lru_cache(maxsize=16)
def _lstm_consts(units: int):
    """Per-column scale and shift of the i, f, g, o blocks: act = tanh(s x) s + b (see lstm_fwd)."""
    import numpy as np

    def cols(i, f, g, o):
        return np.repeat(np.asarray([i, f, g, o], dtype=np.float32), units)

    return cols(0.5, 0.5, 1.0, 0.5), cols(0.5, 0.5, 0.0, 0.5)


def lstm_backward(act, c, c_prev, dh, dc, dpre):
    """dpre (N, 4O) written; dc (N, O), the gradient reaching c from step t+1, becomes dc_prev in place."""
    _KERNELS["lstm_bwd"](act, c, c_prev, dh, dc, dpre)


def gru_forward(xg, hg, bhh, h_prev, h, hn):
    """In place: xg (N, 3O) becomes the gates r, z, n; hg = h_prev @ W_hh^T without its bias (None at the
    first step), bhh added here; h and hn (N, O) written."""
    _KERNELS["gru_fwd"](xg, xg if hg is None else hg, hg is not None, bhh, h_prev, h, hn)


def gru_backward(act, hn, h_prev, dh, dxg, dhg, direct):
    """dxg, dhg (N, 3O) and direct = z dh (N, O) written."""
    _KERNELS["gru_bwd"](act, hn, h_prev, dh, dxg, dhg, direct)
