"""REVIEW_DIR from DETECTIONS: the steps of `convnet review`, in order (docs/REVIEW.md).

1. The sample. A review.csv in REVIEW_DIR is the sample and is never drawn again: a sampling flag of this run
   that differs from the one it was drawn with is named in a note and not used. Otherwise DETECTIONS are
   read, the sample drawn (sample.py), each item's audio found, and review.json then review.csv written.
2. Media. Each item's clip, listening copy and spectrogram (media.py) that is not there yet, with a progress
   bar; a run stopped part way goes on where it stopped. media.json holds each item's facts (clip times,
   rates, time expansion) for the page.
3. Verdicts. verdicts.selections.txt is rewritten from verdicts.csv where the two differ.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

from convnet_cli.errors import ConfigError, DataError
from convnet_cli.fileio import write_text_atomic
from convnet_cli.review import sample as smp
from convnet_cli.review.page import page_data, page_html
from convnet_cli.review.verdicts import VerdictStore

MEDIA_JSON = "media.json"
INDEX = "index.html"
SAMPLING_FLAGS = {"select": "--select", "per_class": "--per-class", "seed": "--seed", "context": "--context",
                  "classes": "--classes", "detections": "DETECTIONS"}


@dataclass
class Review:
    review_dir: str
    items: list
    settings: dict
    media: dict               # {id: facts}
    store: VerdictStore
    notes: list

    @property
    def classes(self) -> list:
        seen = []
        for it in self.items:
            if it.label not in seen:
                seen.append(it.label)
        return seen

    def page(self, mode: str) -> str:
        return page_html(page_data(self.review_dir, self.items, self.media, self.store.read(), self.classes, mode))

    def progress_line(self, verdicts=None) -> str:
        verdicts = self.store.read() if verdicts is None else verdicts
        per = []
        for c in self.classes:
            mine = [it.id for it in self.items if it.label == c]
            per.append(f"{c} {sum(1 for i in mine if i in verdicts)}/{len(mine)}")
        return f"{len(verdicts)} of {len(self.items)} reviewed ({', '.join(per)})"


def _check_flags(per_class, select, context):
    if select not in smp.SELECT:
        raise ConfigError(f"--select {select}: use one of {', '.join(smp.SELECT)}")
    if per_class < 1:
        raise ConfigError(f"--per-class {per_class}: give at least 1")
    if not (math.isfinite(context) and context >= 0):
        raise ConfigError(f"--context {context:g}: give seconds >= 0")


def _draw(detections, review_dir, recordings, per_class, select, context, classes, seed, echo):
    dets, ctx = smp.load_detections(detections, exclude=review_dir)
    if not dets:
        raise DataError(f"{detections}: holds no detections; nothing to review")
    wanted = smp.choose_classes(dets, classes, ctx["classes"])
    empty = [c for c in wanted if not any(d.label == c for d in dets)]
    if empty:
        echo(f"note: no detections of {', '.join(empty)}")
    drawn, bins = smp.draw(dets, wanted, per_class, select, seed)
    drawn = smp.find_recordings(drawn, ctx["done"], recordings)
    items = smp.items_of(drawn, ctx["band"])
    counts = {c: sum(1 for d in dets if d.label == c) for c in wanted}
    settings = {"detections": os.path.abspath(detections), "select": select, "per_class": int(per_class),
                "seed": int(seed), "context": float(context), "classes": wanted,
                "detections_per_class": counts, "bins": bins, "time_expansion": ctx["time_expansion"]}
    smp.write_sample(review_dir, items, settings)
    return items, settings


def _kept_notes(settings, given: dict, detections) -> list:
    """Notes for the flags of this run that differ from those the sample was drawn with."""
    now = dict(given)
    if "detections" in now:
        now["detections"] = os.path.abspath(detections)
    if "classes" in now and isinstance(now["classes"], str):
        now["classes"] = [c.strip() for c in now["classes"].split(",") if c.strip()]
    differ = [f"{SAMPLING_FLAGS[k]} {now[k] if not isinstance(now[k], list) else ','.join(now[k])}"
              for k in SAMPLING_FLAGS if k in now and k in settings and now[k] != settings[k]]
    if not differ:
        return []
    was = " ".join(f"{SAMPLING_FLAGS[k]} {settings[k]}" for k in ("select", "per_class", "seed", "context")
                   if k in settings)
    return [f"the folder holds a sample already (review.csv, drawn with {was}); it is kept and never drawn again, "
            f"so {', '.join(differ)} of this run {'is' if len(differ) == 1 else 'are'} not used (give another --out "
            "for a new sample)"]


def _read_media(review_dir) -> dict:
    try:
        with open(os.path.join(review_dir, MEDIA_JSON), encoding="utf-8") as f:
            raw = json.load(f)
        return {int(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_media(review_dir, media):
    write_text_atomic(os.path.join(review_dir, MEDIA_JSON),
                      json.dumps({str(k): media[k] for k in sorted(media)}, indent=1) + "\n")


def _media(review_dir, items, context, progress, time_expansion=1.0):
    from convnet_cli.progress import Progress
    from convnet_cli.review.media import make_media

    media = _read_media(review_dir)

    def ready(it):
        return it.id in media and all(os.path.exists(os.path.join(review_dir, p))
                                      for p in (it.clip, it.listen, it.image))

    todo = [it for it in items if not ready(it)]
    media = {k: v for k, v in media.items() if k in {it.id for it in items}}
    if not todo:
        return media
    try:
        with Progress("review: clips", total=len(todo), unit="clips", enabled=progress) as bar:
            for k, it in enumerate(todo, 1):
                media[it.id] = make_media(it, review_dir, context, time_expansion)
                bar.add(1)
                if k % 25 == 0:
                    _write_media(review_dir, media)
    finally:                    # a Ctrl-C keeps what is made: the next run goes on from there
        _write_media(review_dir, media)
    return media


def prepare(detections, out_dir, *, recordings=None, per_class=50, select="random", context=1.0, classes=None,
            seed=0, given=None, progress=True, echo=print) -> Review:
    """Steps 1-3 of the module doc -> the Review. given: {flag name: value} of the sampling flags the user
    gave (SAMPLING_FLAGS' keys), for the note when a sample is kept."""
    from convnet_cli.review.sample import REVIEW_CSV, is_detect_dir, read_sample

    out_dir = os.fspath(out_dir)
    _check_flags(per_class, select, context)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out {out_dir}: is a file; give a folder for the review")
    if is_detect_dir(out_dir):
        raise ConfigError(f"--out {out_dir}: is a detect OUT_DIR; give the review a folder of its own "
                          f"(e.g. {os.path.join(out_dir, 'review')})")
    os.makedirs(out_dir, exist_ok=True)
    notes = []
    if os.path.exists(os.path.join(out_dir, REVIEW_CSV)):
        items, settings = read_sample(out_dir)
        notes += _kept_notes(settings, given or {}, detections)
        context = float(settings.get("context", context))
    else:
        items, settings = _draw(detections, out_dir, recordings, per_class, select, context, classes, seed, echo)
    for n in notes:
        echo(f"note: {n}")
    media = _media(out_dir, items, context, progress, float(settings.get("time_expansion", 1.0)))
    store = VerdictStore(out_dir, items, {k: v.get("nyquist", 0.0) for k, v in media.items()})
    store.sync_table()
    return Review(out_dir, items, settings, media, store, notes)


def write_index(review: Review) -> str:
    path = os.path.join(review.review_dir, INDEX)
    write_text_atomic(path, review.page("file"))
    return path
