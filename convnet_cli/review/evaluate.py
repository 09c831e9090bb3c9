"""Reviewed precision: what the verdicts of a REVIEW_DIR say about the detector (docs/REVIEW.md).

Per class: the items sampled and reviewed, the true / false / unsure counts, and the precision
true / (true + false) (unsure verdicts count in neither) with its 95% Wilson interval. What it estimates
depends on the draw (review.json `select`): with `random`, the precision of all the class's detections at
detect's threshold; with `top`, of the highest-scored ones only. With `stratified` it is also given per score
bin, with each bin's share of the class's detections, and `precision_all` combines the bins weighted by
those shares (the precision of all the class's detections; null while a bin that holds detections has no
true or false verdict yet). `overall` pools the classes' counts.
"""
from __future__ import annotations

import os

import numpy as np

from convnet_cli.detect.events import pick_classes
from convnet_cli.errors import DataError
from convnet_cli.metrics import wilson_interval

CONFIDENCE = 0.95


def _counts(ids, verdicts) -> dict:
    t = sum(1 for i in ids if verdicts.get(i) == "true")
    f = sum(1 for i in ids if verdicts.get(i) == "false")
    u = sum(1 for i in ids if verdicts.get(i) == "unsure")
    ci = wilson_interval(t, t + f)
    return {"sampled": len(ids), "reviewed": t + f + u, "true": t, "false": f, "unsure": u,
            "precision": t / (t + f) if t + f else None,
            "precision_low": ci[0] if ci else None, "precision_high": ci[1] if ci else None}


def review_precision(review_dir: str, classes=None) -> dict:
    """{"select", "confidence", "classes": {class: counts (+ "bins", "precision_all" when stratified)},
    "overall": counts} for the verdicts in review_dir (see the module doc). classes: only these (a list or
    'a,b' text; default: every class of the sample)."""
    from convnet_cli.review.sample import REVIEW_CSV, bin_of, read_sample
    from convnet_cli.review.verdicts import VERDICTS_CSV, read_verdicts

    if not os.path.exists(os.path.join(review_dir, VERDICTS_CSV)):
        raise DataError(f"{review_dir}: no {VERDICTS_CSV} yet; mark some items in the review page first (convnet "
                        f"review ... --out {review_dir})")
    if not os.path.exists(os.path.join(review_dir, REVIEW_CSV)):
        raise DataError(f"{review_dir}: {VERDICTS_CSV} without {REVIEW_CSV}; give the folder convnet review wrote")
    items, settings = read_sample(review_dir)
    verdicts = read_verdicts(review_dir, items)
    select = settings.get("select")
    sampled = []
    for it in items:
        if it.label not in sampled:
            sampled.append(it.label)
    if classes:
        wanted = pick_classes(classes, sampled, f"the review in {review_dir} holds no class", "its classes")
        items = [it for it in items if it.label in wanted]
        sampled = [c for c in sampled if c in wanted]
    classes = sampled
    out = {"select": select, "confidence": CONFIDENCE, "classes": {}, "overall": None}
    for c in classes:
        mine = [it for it in items if it.label == c]
        r = _counts([it.id for it in mine], verdicts)
        bins = (settings.get("bins") or {}).get(c)
        if select == "stratified" and bins:
            edges, population = bins["edges"], bins["detections"]
            which = bin_of([it.score for it in mine], edges)
            r["bins"] = []
            for k in range(len(edges) - 1):
                b = _counts([it.id for it, w in zip(mine, which) if w == k], verdicts)
                b = {"low": edges[k], "high": edges[k + 1], "detections": int(population[k]), **b}
                r["bins"].append(b)
            known = [b for b in r["bins"] if b["detections"]]
            total = sum(b["detections"] for b in known)
            r["precision_all"] = (sum(b["detections"] * b["precision"] for b in known) / total
                                  if known and all(b["precision"] is not None for b in known) else None)
        out["classes"][c] = r
    out["overall"] = _counts([it.id for it in items], verdicts)
    return out


def calibrate_review(review_dir: str, target: float, classes=None) -> tuple:
    """`evaluate REVIEW_DIR --calibrate precision=P`: ({class: threshold}, notes) from the
    verdicts alone. Per class, the precision of the detections scoring at least t is estimated from the true
    and false verdicts at or above t, each weighted by how many detections it stands for: with `stratified`,
    its bin's detections over the bin's true and false verdicts; with `random` and `top`, 1 (a random sample
    of the class, or every detection above the lowest reviewed score). The threshold is the lowest reviewed
    score whose estimate reaches P. Only thresholds the verdicts speak for are candidates: above the score of
    any sampled item still without a verdict (the page goes by falling score), and above every score bin that
    holds detections but no true or false verdict. A class no candidate reaches P with gets 1.0, a class
    without true or false verdicts keeps 0.5; the notes say which."""
    from convnet_cli.review.sample import bin_of, read_sample
    from convnet_cli.review.verdicts import read_verdicts
    from convnet_cli.thresholds import DEFAULT_THRESHOLD

    items, settings = read_sample(review_dir)
    verdicts = read_verdicts(review_dir, items)
    select = settings.get("select")
    labels = list(dict.fromkeys(it.label for it in items))
    if classes:
        labels = pick_classes(classes, labels, f"the review in {review_dir} holds no class", "its classes")
    chosen, notes = {}, []
    for c in labels:
        mine = [it for it in items if it.label == c]
        tf = [it for it in mine if verdicts.get(it.id) in ("true", "false")]
        if not tf:
            chosen[c] = DEFAULT_THRESHOLD
            notes.append(f"{c}: no true or false verdict to calibrate on; threshold {DEFAULT_THRESHOLD:g} kept")
            continue
        weight = {it.id: 1.0 for it in tf}
        unmarked = max((it.score for it in mine if it.id not in verdicts), default=-np.inf)
        floor = -np.inf
        bins = (settings.get("bins") or {}).get(c)
        if select == "stratified" and bins:
            edges, population = bins["edges"], bins["detections"]
            which = dict(zip((it.id for it in tf), bin_of([it.score for it in tf], edges).tolist()))
            reviewed = np.bincount(list(which.values()), minlength=len(population))
            for k, (pop, n) in enumerate(zip(population, reviewed)):
                if pop and not n:   # no verdict speaks for this bin: no threshold below its top
                    floor = max(floor, edges[k + 1] if k + 1 < len(edges) - 1 else np.inf)
            weight = {i: population[k] / reviewed[k] for i, k in which.items()}
        tf.sort(key=lambda it: -it.score)
        best = top = None
        hit = total = 0.0
        for it in tf:
            if it.score <= unmarked or it.score < floor:
                break   # from here down the verdicts do not speak for every detection
            total += weight[it.id]
            hit += weight[it.id] * (verdicts[it.id] == "true")
            precision = hit / total
            top = precision if top is None else max(top, precision)
            if precision >= target:
                best = it.score   # falling scores: the last one reaching P is the lowest
        if best is None:
            chosen[c] = 1.0
            notes.append(f"{c}: no reviewed threshold reaches precision {target:g}"
                         + (f" (at most {top:.3f})" if top is not None else " (review more items)") + "; threshold 1.0")
        else:
            chosen[c] = float(best)
    return chosen, notes


def _p(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _ci(r) -> str:
    return "-" if r["precision_low"] is None else f"{r['precision_low']:.3f}-{r['precision_high']:.3f}"


def _table(rows) -> list:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def format_table(result: dict) -> str:
    head = ("class", "sampled", "reviewed", "true", "false", "unsure", "precision", "95% interval")
    rows = [head]
    for name, r in list(result["classes"].items()) + [("overall", result["overall"])]:
        rows.append((name, str(r["sampled"]), str(r["reviewed"]), str(r["true"]), str(r["false"]), str(r["unsure"]),
                     _p(r["precision"]), _ci(r)))
    lines = _table(rows)
    for name, r in result["classes"].items():
        if "bins" not in r:
            continue
        lines += ["", f"{name}: per score bin (precision of all its detections: {_p(r['precision_all'])})"]
        brows = [("score", "detections", "reviewed", "true", "false", "unsure", "precision", "95% interval")]
        for b in reversed(r["bins"]):
            brows.append((f"{b['low']:.4f}-{b['high']:.4f}", str(b["detections"]), str(b["reviewed"]), str(b["true"]),
                          str(b["false"]), str(b["unsure"]), _p(b["precision"]), _ci(b)))
        lines += _table(brows)
    if result.get("select") == "top":
        lines += ["", "note: a --select top sample: the precision of the highest-scored detections, not of all"]
    return "\n".join(lines)


def evaluate_review(review_dir: str, out_dir: str | None, classes=None, quiet: bool = False, echo=print) -> dict:
    """`convnet evaluate REVIEW_DIR`: print the table, write evaluation.json (into out_dir, default review_dir)."""
    import json

    from convnet_cli.fileio import write_text_atomic

    result = review_precision(review_dir, classes)
    echo(format_table(result))
    folder = out_dir or review_dir
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "evaluation.json")
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    if not quiet:
        echo(f"wrote {path}")
    return result


def is_review_dir(path: str) -> bool:
    from convnet_cli.review.verdicts import VERDICTS_CSV

    from convnet_cli.review.sample import REVIEW_CSV

    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, n)) for n in (VERDICTS_CSV, REVIEW_CSV))
