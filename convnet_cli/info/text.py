"""`convnet info` as text: the dicts of info/__init__.py's `describe` laid out for a terminal. `--json`
prints the same dicts as they are."""
from __future__ import annotations

import json
import os

_KEY = 15            # width of the left-hand labels
_MAX_VALUE = 200     # metadata / option values longer than this are cut in text (--json has them whole)
_CLASS_COLUMNS = 10  # per-batch tables show one column per class up to this many classes


def _ranges(nums) -> str:
    """[1, 2, 3, 5] -> '1-3,5'."""
    nums, parts, start = list(nums), [], None
    for i, v in enumerate(nums):
        start = v if start is None else start
        if i + 1 == len(nums) or nums[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(parts) or "-"


def _size(n) -> str:
    n = float(n)
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{int(n)} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def _shape(shape) -> str:
    return " x ".join("?" if s is None else str(s) for s in shape) if shape else "-"


def plain(value):
    """JSON for what a foreign batches.meta may hold: numpy scalars and arrays, bytes."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin1")
    return str(value)


def _value(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=plain)
    if len(text) > _MAX_VALUE:
        text = f"{text[:_MAX_VALUE]}… ({len(text)} characters; --json shows all)"
    return text


def _line(key, value) -> str:
    return f"{key:<{_KEY}}{value}"


def _features(f) -> str:
    if not f:
        return "-"
    return ", ".join(f"{k} {_value(v)}" for k, v in f.items())


def _table(header, rows) -> list:
    """Text columns left-aligned, number columns (numbers, or '-' for none) right-aligned."""
    numeric = [bool(rows) and all(isinstance(r[i], (int, float)) or r[i] == "-" for r in rows)
               for i in range(len(header))]
    rows = [[f"{c:,}" if isinstance(c, int) and not isinstance(c, bool) else c for c in r] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def fmt(row):
        return "  ".join(f"{c!s:>{w}}" if num else f"{c!s:<{w}}" for c, w, num in zip(row, widths, numeric)).rstrip()

    return [fmt(header)] + [fmt(r) for r in rows]


# ---- batch folder -----------------------------------------------------------------------------------

def _skipped(s) -> list:
    if not s["count"] and not s["listed"]:
        return [_line("skipped", "no files")]
    where = f" (listed in {s['file']})" if s["file"] else ""
    out = [_line("skipped", f"{s['count']} file{'' if s['count'] == 1 else 's'}{where}")]
    for r in s["reasons"]:
        out.append(_line("", f"{r['count']:>5} x {r['reason']}"))
    if s.get("other_reasons"):
        out.append(_line("", f"      and {s['other_reasons']} other reasons"))
    for e in s["examples"]:
        out.append(_line("", f"e.g. {e['file']}"))
    return out


def _per_batch(batches) -> str:
    sizes = [b["cases"] for b in batches]
    if not sizes:
        return ""
    lo, hi = min(sizes), max(sizes)
    return f" ({lo:,} a batch)" if lo == hi else f" ({lo:,}-{hi:,} a batch)"


def _batches(d) -> str:
    names = d["label_names"]
    k = len(names)
    totals = d["per_class"]
    train_n, test_n = totals["train"]["cases"], totals["test"]["cases"]
    lines = [
        _line("batch folder", d["path"]),
        _line("classes", f"{k}: {', '.join(names)}" if k else "none (unlabelled)"),
        _line("data", f"{_shape(d['data_shape'])} per case ({d['num_vis']:,} values), {d['dtype'] or '?'}"
                      + (", stored as uint8 with data_offset/data_scale" if d["uint8_scaled"] else "")),
        _line("cases", f"{d['num_cases']:,} in {d['num_batches']} batch files{_per_batch(d['batches'])}"),
        _line("train range", f"{_ranges(d['train_range'])} ({train_n:,} cases)"),
        _line("test range", f"{_ranges(d['test_range'])} ({test_n:,} cases)"),
        _line("normalisation", d["normalisation"]),
        _line("features", _features(d["features"])),
        *_skipped(d["skipped"]),
        *([_line("note", "a killed make-batches left this set half installed (.make-batches.swap): convnet reads "
                         "the new set whole, a reader of the plain files (cuda-convnet's own data provider) would "
                         "see a mix; run that make-batches again to finish the move")]
          if d.get("interrupted_install") else []),
        "",
    ]
    multi = d.get("multi_label")
    rows = [[name, totals["train"]["per_class"][i], totals["test"]["per_class"][i], totals["all"]["per_class"][i]]
            for i, name in enumerate(names)]
    if multi:
        lines[1] = _line("classes", f"{k}: {', '.join(names)} (multi-label: a set of classes per case)")
        lines += _multilabel(names, rows, multi) + [""]
    else:
        if totals["all"]["unlabelled"]:
            rows.append(["(unlabelled)", totals["train"]["unlabelled"], totals["test"]["unlabelled"],
                         totals["all"]["unlabelled"]])
        lines += _table(["class", "train", "test", "total"], rows) + [""]
    wide = k <= _CLASS_COLUMNS
    header = ["batch", "file", "split", "cases"] + (names if wide else ["smallest class", "largest class"])
    rows = []
    for b in d["batches"]:
        row = [b["batch"], b["file"], b["split"] or "-", b["cases"]]
        counts = b["per_class"]
        if wide:
            row += counts
        elif counts:
            lo, hi = min(range(k), key=counts.__getitem__), max(range(k), key=counts.__getitem__)
            row += [f"{counts[lo]} {names[lo]}", f"{counts[hi]} {names[hi]}"]
        else:
            row += ["-", "-"]
        rows.append(row)
    if any(b["unlabelled"] for b in d["batches"]) and wide:
        header.append("(unlabelled)")
        for row, b in zip(rows, d["batches"]):
            row.append(b["unlabelled"])
    lines += _table(header, rows)
    return "\n".join(lines)


def _multilabel(names, rows, multi) -> list:
    """The class table of a multi-label folder (cases where each class is present, and its unknown entries),
    the co-occurrence counts and the cases with 0 / 1 / 2+ classes."""
    for row, unknown in zip(rows, multi["all"]["unknown"]):
        row.append(unknown)
    out = ["cases where each class is present (a case may hold several; unknown: entries left out of the cost)"]
    out += _table(["class", "train", "test", "total", "unknown"], rows) + [""]
    out.append("co-occurrence (cases holding both classes; the diagonal: cases holding that class)")
    out += _table(["class"] + list(names), [[n] + row for n, row in zip(names, multi["all"]["cooccurrence"])])
    out += ["", "cases by the number of classes they hold"]
    card = [multi[split]["cardinality"] for split in ("train", "test", "all")]
    out += _table(["classes", "train", "test", "total"], [[n] + [c[n] for c in card] for n in ("0", "1", "2+")])
    return out


def _batch_file(d) -> str:
    names = d["label_names"]
    lines = [_line("batch file", d["path"]),
             _line("classes", ", ".join(names) if d["folder_meta"] else
                   f"{len(names)} label values (no readable batches.meta beside it for their names)"),
             _line("cases", f"{d['cases']:,}" + (f" ({d['split']} range)" if d.get("split") else "")),
             _line("data", f"stored {_shape(d['stored_shape'])}, {d['dtype']}"
                           + (", uint8 with data_offset/data_scale" if d["uint8_scaled"] else "")),
             ""]
    rows = [[n, c] for n, c in zip(names, d["per_class"])]
    multi = d.get("multi_label")
    if multi:
        for row, unknown in zip(rows, multi["unknown"]):
            row.append(unknown)
        c = multi["cardinality"]
        return "\n".join(lines + _table(["class", "present", "unknown"], rows)
                         + ["", _line("classes", f"{c['0']:,} cases with none, {c['1']:,} with 1, "
                                                 f"{c['2+']:,} with 2 or more")])
    if d["unlabelled"]:
        rows.append(["(unlabelled)", d["unlabelled"]])
    return "\n".join(lines + _table(["class", "cases"], rows))


# ---- run directory / checkpoint -----------------------------------------------------------------------

def _best(b) -> str:
    if not b:
        return "no test yet"
    parts = [f"{k} {b[k]:.4f}" for k in ("error", "cost", "auc", "map") if b.get(k) is not None]
    where = f"{b['epoch']}.{b['batch']}"
    file = f"; {b['checkpoint']}" if b.get("checkpoint") else ""
    return f"{', '.join(parts) or 'metric ' + str(b.get('metric'))} at {where} (by {b['by']}{file})"


def _run(d) -> str:
    names = d["label_names"]
    done = d["epochs_done"]
    done_text = f"{done:g}" if float(done).is_integer() else f"{done:.2f}"
    epochs = f"{done_text} of {d['epochs']}" if d.get("epochs") else done_text
    extra = []
    if d.get("batches_done") is not None:
        extra.append(f"{d['batches_done']} batches" + (f", {d['batches_per_epoch']} an epoch"
                                                       if d.get("batches_per_epoch") else ""))
    if d.get("seconds") is not None:
        extra.append(f"{d['seconds']:.3g} s of training")
    if d["stopped_early"]:
        extra.append("stopped early")
    cps = d["checkpoints"]
    cp_text = ", ".join(c["file"] for c in cps) or "none"
    if cps:
        cp_text += f" ({len(cps)} files, {_size(sum(c['bytes'] for c in cps))})"
    lines = [
        _line("run directory" if d["kind"] == "run" else "checkpoint", d["path"]),
        _line("state from", f"{os.path.basename(d['checkpoint'])} (format {d['format_version']})"),
        _line("classes", (f"{len(names)}: {', '.join(names)}" if names else "-")
              + (" (multi-label: one logistic output per class)" if d.get("multi_label") else "")),
        _line("data", f"{_shape(d['data_shape'])} per case; batches {d['data_path'] or '?'}"),
        _line("features", _features(d["features"])),
        _line("configs", f"{d['layer_def'] or '?'}, {d['layer_params'] or '?'} (copies in the run directory)"),
        _line("epochs done", epochs + (f" ({'; '.join(extra)})" if extra else "")),
        _line("best test", _best(d["best"]) + f"; {d['tests']} tests in all"),
        _line("checkpoints", cp_text),
        "",
    ]
    rows = []
    for r in d["layers"]:
        shape = "x".join(str(s) for s in r["output_shape"])
        rows.append([r["name"], r["type"] + (f" +{r['neuron']}" if r["neuron"] else ""),
                     ",".join(r["inputs"]) or "-", shape, r["params"] if r["params"] else "-"])
    lines += _table(["layer", "type", "inputs", "output (CxHxW)", "params"], rows)
    other = d["other_arrays"]
    lines.append(f"{d['total_params']:,} learned parameters; {other['count']} other arrays (running statistics, "
                 f"updater state: {_size(other['bytes'])})")
    lines += ["", "options"]
    for k, v in d["options"].items():
        lines.append(f"  {k:<{_KEY}} {_value(v)}")
    return "\n".join(lines)


# ---- ONNX --------------------------------------------------------------------------------------------

def _io(v) -> str:
    shape = _shape(v["shape"]) if v["shape"] is not None else "shape unknown"
    return f"{v['name']}  {v['type'] or '?'}  {shape}"


def _onnx(d) -> str:
    opsets = ", ".join(f"{dom} {ver}" for dom, ver in d["opsets"].items()) or "-"
    ops = ", ".join(f"{op} {n}" for op, n in d["operators"].items())
    lines = [
        _line("ONNX model", f"{d['path']} ({_size(d['bytes'])})"),
        _line("format", f"IR {d['ir_version']}; opset {opsets}"
                        + (f"; producer {d['producer']}" if d["producer"] else "")),
    ]
    for label, items in (("inputs", d["inputs"]), ("outputs", d["outputs"])):
        for i, v in enumerate(items or [None]):
            lines.append(_line(label if i == 0 else "", _io(v) if v else "none"))
    lines.append(_line("operators", f"{d['nodes']} nodes: {ops}" if ops else "none"))
    n = d["initializers"]
    lines.append(_line("weights", f"{d['weights']:,} values in {n} initializer{'' if n == 1 else 's'}"
                                  + (f"; external data in {', '.join(d['external_data'])} (not read)"
                                     if d["external_data"] else "")))
    if d["doc"]:
        lines.append(_line("description", _value(d["doc"])))
    lines.append("metadata" if d["metadata"] else _line("metadata", "none"))
    for k, v in d["metadata"].items():
        lines.append(f"  {k:<{_KEY}} {_value(v)}")
    return "\n".join(lines)


_RENDER = {"batches": _batches, "batch_file": _batch_file, "run": _run, "checkpoint": _run, "onnx": _onnx}


def render(info: dict) -> str:
    """The text `convnet info` prints for a dict from `describe`."""
    return _RENDER[info["kind"]](info)
