"""The PNG plots of `convnet show`, as pure functions of arrays: each writes one file and returns its path.

    plot_cost(records, path)                      cost and error rate against epochs (train and test)
    plot_filters(weights, path)                   filters (F, C, fh, fw) as a normalized grid, 16 per row
    plot_preds(inputs, probs, labels, names, path) cases with their top-k class bars, true class marked
    plot_confusion(conf, names, path)             a labeled confusion matrix (rows = true class)
    plot_pr_curves(curves, path)                  multi-label: each class's precision-recall curve, its AP
    plot_cooccurrence(true, predicted, names, path)  multi-label: cases holding both classes, true and predicted

matplotlib is optional (the `plot` extra) and imported only here, inside the functions, with the Agg
renderer through `matplotlib.figure.Figure` (no pyplot, no global backend switch, no display needed).
Figures have fixed sizes in pixels at DPI (no tight bounding box), so a plot's size is predictable.
"""
from __future__ import annotations

import math

import numpy as np

from convnet_cli.errors import ConfigError

DPI = 100
MISSING_MATPLOTLIB = "matplotlib is not installed; install it with: pip install 'convnet[plot]'"
TRAIN_COLOR = "#1f77b4"
TEST_COLOR = "#d62728"


def require_matplotlib():
    """The matplotlib module, or a ConfigError (exit 2) that says how to install it."""
    try:
        import matplotlib
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise ConfigError(MISSING_MATPLOTLIB) from None
    return matplotlib


def _figure(width_px: float, height_px: float):
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)


def _save(fig, path: str) -> str:
    from convnet_cli.fileio import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, dpi=DPI, format="png", facecolor="white"))
    return path


# ---------------------------------------------------------------------------------------------------
# cost and error against epochs
# ---------------------------------------------------------------------------------------------------
COST_SIZE = (1000, 750)


def _series(records, kind, key):
    xs, ys = [], []
    for r in records:
        if r.get("type") != kind:
            continue
        v = r.get(key)
        if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        x = r.get("progress")
        if x is None:
            x = r.get("epoch", len(xs) + 1)
        xs.append(float(x))
        ys.append(float(v))
    return np.asarray(xs), np.asarray(ys)


def _mark_best(records, best_by, ax_cost, ax_err):
    """A dashed line at the test that made best.npz (by the run's --best-by), its value written beside it."""
    by = best_by or "cost"
    vx, vy = _series(records, "test", by)
    if not vy.size and by == "error":
        return
    if not vy.size:
        by = "cost"
        vx, vy = _series(records, "test", by)
    if not vy.size:
        return
    i = int(np.argmax(vy)) if by == "auc" else int(np.argmin(vy))
    for ax in (ax_cost, ax_err):
        ax.axvline(vx[i], color=TEST_COLOR, linestyle="--", linewidth=0.8, alpha=0.6)
    ax = ax_err if by == "error" else ax_cost
    what = "AUC" if by == "auc" else by
    y = vy[i] if by != "auc" else ax.get_ylim()[1]
    ax.annotate(f"best.npz: test {what} {vy[i]:.4f}", (vx[i], y), textcoords="offset points",
                xytext=(0, 12 if by != "auc" else -12), ha="center", fontsize=8, color=TEST_COLOR)


def plot_cost(records, path: str, title: str | None = None, best_by: str | None = None) -> str:
    """Training and test cost (top) and error rate (bottom) against epochs, in one figure.

    records: train_log.jsonl records ({'type': 'train'|'test', 'progress': epochs done, 'cost', 'error'}).
    Training batches are a line; test results a step line (each test value held over the training it
    followed, as cuda-convnet's shownet drew them) with a marker at each test. A dashed line marks the test
    that made best.npz by `best_by` (the run's --best-by: cost, error or auc; default cost).
    """
    fig = _figure(*COST_SIZE)
    ax_cost, ax_err = fig.subplots(2, 1, sharex=True)
    for ax, key, label in ((ax_cost, "cost", "cost"), (ax_err, "error", "error rate")):
        tx, ty = _series(records, "train", key)
        vx, vy = _series(records, "test", key)
        if tx.size:
            ax.plot(tx, ty, color=TRAIN_COLOR, linewidth=1.0, alpha=0.85, label=f"training {label}")
        if vx.size:
            # hold each test value back to the previous test (or the start of training)
            start = min(tx.min() if tx.size else vx[0], 0.0)
            sx = np.r_[start, vx]
            sy = np.r_[vy[0], vy]
            ax.step(sx, sy, where="pre", color=TEST_COLOR, linewidth=1.6, label=f"test {label}")
            ax.plot(vx, vy, "o", color=TEST_COLOR, markersize=3)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if tx.size or vx.size:
            ax.legend(loc="upper right", fontsize=9)
        else:
            ax.text(0.5, 0.5, f"no {label} logged (no classification cost)" if key == "error" else f"no {label} logged",
                    ha="center", va="center", transform=ax.transAxes, color="gray")
    ax_err.set_xlabel("epoch")
    _mark_best(records, best_by, ax_cost, ax_err)
    fig.suptitle(title or "cost and error rate")
    fig.subplots_adjust(left=0.08, right=0.97, top=0.92, bottom=0.08, hspace=0.12)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------
# filters
# ---------------------------------------------------------------------------------------------------
FILTER_MARGIN = 20  # px around the grid
FILTER_TITLE = 40   # px above it


def filter_tiles(weights, max_filters: int = 256) -> tuple:
    """weights (F, C, fh, fw) -> (tiles (n, fh, fw[, 3]) normalized, rgb, note).

    3 channels: each filter an RGB tile scaled to [0, 1]. 1 channel: each filter scaled by its largest
    |w| to [-1, 1] (0 stays 0, for a diverging colormap). Other channel counts: one tile per (filter,
    channel), filter-major. At most max_filters tiles."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"filters must be (F, C, fh, fw), got shape {w.shape}")
    f, c, fh, fw = w.shape
    note = ""
    if c == 3:
        if f > max_filters:
            note = f"first {max_filters} of {f} filters"
        tiles = w.transpose(0, 2, 3, 1)[:max_filters]
        lo = tiles.min(axis=(1, 2, 3), keepdims=True)
        hi = tiles.max(axis=(1, 2, 3), keepdims=True)
        tiles = np.where(hi > lo, (tiles - lo) / np.where(hi > lo, hi - lo, 1), 0.5)
        rgb = True
    else:
        tiles = w.reshape(f * c, fh, fw)
        if c > 1:
            note = f"{f} filters x {c} channels, one tile per (filter, channel)"
        if tiles.shape[0] > max_filters:
            note = (note + "; " if note else "") + f"first {max_filters} of {tiles.shape[0]} tiles"
        tiles = tiles[:max_filters]
        peak = np.abs(tiles).max(axis=(1, 2), keepdims=True)
        tiles = np.where(peak > 0, tiles / np.where(peak > 0, peak, 1), 0.0)
        rgb = False
    return tiles, rgb, note


def filter_grid_size(n: int, fh: int, fw: int, per_row: int = 16) -> tuple:
    """(width_px, height_px, scale, cols, rows) of the figure plot_filters draws for n tiles of fh x fw."""
    cols = max(1, min(per_row, n))
    rows = max(1, math.ceil(n / cols))
    scale = max(1, int(min(60 / fw, 120 / fh)))
    grid_w = (cols * (fw + 1) + 1) * scale
    grid_h = (rows * (fh + 1) + 1) * scale
    return grid_w + 2 * FILTER_MARGIN, grid_h + FILTER_MARGIN + FILTER_TITLE, scale, cols, rows


def plot_filters(weights, path: str, title: str | None = None, per_row: int = 16, max_filters: int = 256,
                 cmap: str = "RdBu_r") -> str:
    """Filters (F, C, fh, fw) as a grid, `per_row` per row, each normalized on its own.

    RGB filters (C = 3) show as colors; 1-channel (spectrogram) filters through `cmap` with 0 at its
    middle and row 0 (the lowest frequency) at the bottom, as the spectrograms are drawn."""
    tiles, rgb, note = filter_tiles(weights, max_filters)
    n, fh, fw = tiles.shape[:3]
    width, height, scale, cols, rows = filter_grid_size(n, fh, fw, per_row)
    grid_h, grid_w = rows * (fh + 1) + 1, cols * (fw + 1) + 1
    if rgb:
        grid = np.ones((grid_h, grid_w, 3))
    else:
        grid = np.full((grid_h, grid_w), np.nan)
    for i in range(n):
        r, c = divmod(i, cols)
        tile = tiles[i] if rgb else tiles[i][::-1]  # flip so that row 0 ends up at the bottom of its tile
        grid[1 + r * (fh + 1): 1 + r * (fh + 1) + fh, 1 + c * (fw + 1): 1 + c * (fw + 1) + fw] = tile
    fig = _figure(width, height)
    ax = fig.add_axes([FILTER_MARGIN / width, FILTER_MARGIN / height, (width - 2 * FILTER_MARGIN) / width,
                       (height - FILTER_MARGIN - FILTER_TITLE) / height])
    if rgb:
        ax.imshow(grid, interpolation="nearest", aspect="auto")
    else:
        import matplotlib

        cm = matplotlib.colormaps[cmap].with_extremes(bad="white")
        ax.imshow(np.ma.masked_invalid(grid), cmap=cm, vmin=-1, vmax=1, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    text = title or "filters"
    text += f"  ({n} of {fh}x{fw}" + (", RGB" if rgb else "") + ")"
    if note:
        text += f"\n{note}"
    fig.text(0.5, 1 - (FILTER_TITLE / 2) / height, text, ha="center", va="center", fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------------------------------
PRED_CELL = (500, 180)  # px per case: the input on the left, its class bars on the right
PRED_COLS = 4
PRED_TITLE = 40


def preds_grid_size(n: int) -> tuple:
    cols = max(1, min(PRED_COLS, n))
    rows = max(1, math.ceil(n / cols))
    return cols * PRED_CELL[0], rows * PRED_CELL[1] + PRED_TITLE, cols, rows


def _case_image(x):
    """x: (C, H, W) -> (image, rgb)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.shape[0] == 3:
        img = x.transpose(1, 2, 0)
        lo, hi = img.min(), img.max()
        return (img - lo) / (hi - lo) if hi > lo else np.full_like(img, 0.5), True
    return x[0], False


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def select_cases(probs, labels, only_errors: bool = False, max_cases: int | None = None) -> np.ndarray:
    """Indices of the cases to draw: all, or those whose top-1 class is not the (known) true one."""
    probs = np.asarray(probs)
    labels = np.asarray(labels).reshape(-1)
    idx = np.arange(probs.shape[0])
    if only_errors:
        idx = idx[(labels >= 0) & (np.argmax(probs, axis=1) != labels)]
    return idx[:max_cases] if max_cases else idx


def plot_preds(inputs, probs, labels, label_names, path: str, topk: int = 3, only_errors: bool = False,
               filenames=None, title: str | None = None, max_cases: int | None = None) -> str:
    """A grid of cases (spectrograms, or images for 3 channels) with bars of their top-k classes.

    inputs: (n, C, H, W) raw features; probs: (n, K); labels: (n,) ints, -1 where unknown. The true
    class's bar is green, others gray; a case whose top-1 class is wrong gets a red title, and when the
    true class is not among the top k its probability is written under the bars. ValueError when no case
    is left to draw (e.g. only_errors and every case right)."""
    inputs = np.asarray(inputs)
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    names = [str(s) for s in label_names]
    if inputs.shape[0] != probs.shape[0] or labels.shape[0] != probs.shape[0]:
        raise ValueError(f"{inputs.shape[0]} inputs, {probs.shape[0]} probability rows, {labels.shape[0]} labels")
    if probs.ndim != 2 or probs.shape[1] != len(names):
        raise ValueError(f"probs has {probs.shape[1] if probs.ndim == 2 else '?'} classes but there are "
                         f"{len(names)} label names")
    idx = select_cases(probs, labels, only_errors, max_cases)
    if idx.size == 0:
        raise ValueError("no misclassified case to show" if only_errors else "no case to show")
    k = max(1, min(int(topk), probs.shape[1]))
    width, height, cols, rows = preds_grid_size(idx.size)
    fig = _figure(width, height)

    def px_axes(x, y_top, w, h):  # an axes placed in pixels from the figure's top-left corner
        return fig.add_axes([x / width, 1 - (y_top + h) / height, w / width, h / height])

    for j, i in enumerate(idx):
        r, c = divmod(j, cols)
        x0, y0 = c * PRED_CELL[0], PRED_TITLE + r * PRED_CELL[1]
        ax_img = px_axes(x0 + 12, y0 + 32, 250, 108)
        ax_bar = px_axes(x0 + 365, y0 + 32, 120, 108)
        img, rgb = _case_image(inputs[i])
        if rgb:
            ax_img.imshow(img, interpolation="nearest", aspect="auto")
        else:
            ax_img.imshow(img, origin="lower", cmap="magma", interpolation="nearest", aspect="auto")
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        top = np.argsort(-probs[i], kind="stable")[:k]
        true = int(labels[i])
        wrong = true >= 0 and top[0] != true
        name = str(filenames[i]) if filenames is not None and i < len(filenames) else f"case {i}"
        if len(name) > 34:
            name = "..." + name[-31:]
        truth = names[true] if 0 <= true < len(names) else "?"
        ax_img.set_title(f"{name}\ntrue: {_short(truth, 30)}", fontsize=7, color="#c00000" if wrong else "black",
                         pad=3)
        colors = ["#2ca02c" if t == true else "#9a9a9a" for t in top]
        ys = np.arange(k)[::-1]
        ax_bar.barh(ys, probs[i, top], color=colors)
        ax_bar.set_yticks(ys)
        ax_bar.set_yticklabels([_short(names[t], 14) for t in top], fontsize=7)
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(axis="x", labelsize=6)
        if true >= 0 and true not in top:
            ax_bar.set_xlabel(f"true {_short(truth, 12)}: {probs[i, true]:.3f}", fontsize=7, color="#2ca02c", labelpad=1)
    shown = "misclassified cases" if only_errors else "cases"
    fig.text(0.5, 1 - (PRED_TITLE / 2) / height,
             (title or "predictions") + f"  ({idx.size} {shown}; top {k}; true class in green)",
             ha="center", va="center", fontsize=11)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------
# confusion matrix
# ---------------------------------------------------------------------------------------------------
def confusion_size(k: int) -> tuple:
    side = int(min(2400, max(500, 200 + 45 * k)))
    return side + 100, side


def plot_confusion(conf, label_names, path: str, title: str | None = None) -> str:
    """A confusion matrix (rows = true class, columns = predicted), counts in the cells (up to 30 classes),
    colored by the fraction of the row (each class's recall on the diagonal)."""
    conf = np.asarray(conf, dtype=np.int64)
    k = conf.shape[0]
    names = [str(s) for s in label_names]
    if conf.shape != (k, k) or len(names) != k:
        raise ValueError(f"confusion matrix {conf.shape} for {len(names)} label names")
    rows = conf.sum(axis=1, keepdims=True)
    frac = np.divide(conf, rows, out=np.zeros(conf.shape, dtype=np.float64), where=rows > 0)
    width, height = confusion_size(k)
    fig = _figure(width, height)
    margin = min(0.3, 0.12 + 0.01 * max(len(n) for n in names))
    ax = fig.add_axes([margin, margin, 0.82 - margin, 0.9 - margin])
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    cax = fig.add_axes([0.85, margin, 0.02, 0.9 - margin])
    fig.colorbar(im, cax=cax, label="fraction of the true class")
    ticks = np.arange(k)
    fs = 9 if k <= 20 else 7 if k <= 40 else 5
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(names, rotation=45 if max(len(n) for n in names) > 3 else 0, ha="right", fontsize=fs)
    ax.set_yticklabels(names, fontsize=fs)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 30:
        for r in range(k):
            for c in range(k):
                ax.text(c, r, str(conf[r, c]), ha="center", va="center", fontsize=fs,
                        color="white" if frac[r, c] > 0.5 else "black")
    total = int(conf.sum())
    acc = np.trace(conf) / total if total else float("nan")
    ax.set_title(f"{title or 'confusion matrix'}  ({total} cases, accuracy {acc:.4f})", fontsize=11)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------
# multi-label: per-class precision-recall and class co-occurrence (in place of a confusion matrix)
# ---------------------------------------------------------------------------------------------------
PR_SIZE = (900, 750)


def plot_pr_curves(curves: dict, path: str, title: str | None = None) -> str:
    """curves: {class: {"precision": (m,), "recall": (m,), "ap": float or None, "at_threshold": (P, R) or
    None, "threshold": t, "support": positives}}: one step curve per class (recall on x), the point of the
    class's threshold marked; the legend gives each class's AP."""
    if not curves:
        raise ValueError("no class to plot")
    fig = _figure(*PR_SIZE)
    ax = fig.add_axes([0.09, 0.08, 0.62, 0.84])
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
              "#17becf"]
    for i, (name, c) in enumerate(curves.items()):
        color = colors[i % len(colors)]
        ap = c.get("ap")
        label = f"{name}  AP {'n/a' if ap is None else format(ap, '.3f')}  ({c.get('support', 0)} present)"
        rec, prec = np.r_[0.0, np.asarray(c["recall"], float)], np.r_[1.0, np.asarray(c["precision"], float)]
        if len(rec) > 1 and np.isfinite(rec).all():
            ax.step(rec, prec, where="pre", color=color, lw=1.6, label=label)
        else:
            ax.plot([], [], color=color, label=label)
        if c.get("at_threshold") is not None:
            p, r = c["at_threshold"]
            ax.plot([r], [p], "o", color=color, ms=6)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8 if len(curves) <= 20 else 6, frameon=False)
    ax.set_title(f"{title or 'precision-recall per class'}  (dots: each class's threshold)", fontsize=11)
    return _save(fig, path)


def plot_cooccurrence(true_counts, predicted_counts, label_names, path: str, title: str | None = None) -> str:
    """Two (k, k) matrices side by side: cases holding both classes, in the targets and in the predictions
    at the thresholds (the diagonal: cases holding each class); colored by the fraction of the row's diagonal
    (how often the column's class comes with the row's), counts in the cells up to 30 classes."""
    names = [str(s) for s in label_names]
    k = len(names)
    mats = [np.asarray(m, dtype=np.int64) for m in (true_counts, predicted_counts)]
    if any(m.shape != (k, k) for m in mats):
        raise ValueError(f"co-occurrence matrices {[m.shape for m in mats]} for {k} label names")
    side = int(min(1400, max(420, 160 + 40 * k)))
    fig = _figure(2 * side + 120, side + 60)
    fs = 9 if k <= 20 else 7 if k <= 40 else 5
    margin = min(0.3, 0.12 + 0.01 * max(len(n) for n in names))
    for j, (m, what) in enumerate(zip(mats, ("true", "predicted"))):
        diag = np.diag(m).reshape(-1, 1)
        frac = np.divide(m, diag, out=np.zeros(m.shape, dtype=np.float64), where=diag > 0)
        left = 0.04 + j * 0.48
        ax = fig.add_axes([left + margin / 2, margin, 0.44 - margin / 2, 0.86 - margin])
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
        ticks = np.arange(k)
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xticklabels(names, rotation=45 if max(len(n) for n in names) > 3 else 0, ha="right", fontsize=fs)
        ax.set_yticklabels(names, fontsize=fs)
        if k <= 30:
            for r in range(k):
                for c in range(k):
                    ax.text(c, r, str(m[r, c]), ha="center", va="center", fontsize=fs,
                            color="white" if frac[r, c] > 0.5 else "black")
        ax.set_title(f"{what}: cases holding both", fontsize=10)
    fig.suptitle(title or "class co-occurrence", fontsize=11)
    return _save(fig, path)
