"""The review loop on the demo recordings (SPEC 18): what verified detections add to training.

detect -> review -> make-batches with the verdicts -> train -> detect, on `convnet demo --recordings`'
synthetic recordings (2 kHz, upcalls and gunshots among ships, tones, down-sweeps and clicks):

1. train on 7 annotated recordings (the demo's), detect on 4 new recordings ("review set") and on 4 more
   held out (the test set);
2. `convnet review` the review set's detections (every one: --per-class 1000, --no-serve); the verdicts are
   filled in from the review set's ground truth, as a careful reviewer would (true when a detection overlaps a
   call of its class by half the shorter of the two, else false), and `convnet review` is run again to write
   verdicts.selections.txt;
3. train again, same seed, on the training tables plus the verdicts table (make-batches reads its Verdict
   column: false = a verified negative that --background-ratio never drops, true = a call), and also on the
   training tables plus the false verdicts only;
4. detect and evaluate each model on the same held-out recordings: false positives before and after.

    python benchmarks/bench_verified_negatives.py [--root /tmp/vneg] [--epochs 15] [--seed 0]
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="/tmp/convnet-verified-negatives")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--distractors", type=float, default=0.4,
                    help="steady tones, down-sweeps and click trains per second in the review and test recordings "
                         "(the demo's training recordings have 0.1)")
    a = ap.parse_args()

    import numpy as np
    import soundfile as sf
    import yaml

    from convnet_cli.demo import SR, config_path, train_demo
    from convnet_cli.demo_recordings import make_annotated_recordings, make_recording, raven_table
    from convnet_cli.detect.detect import detect
    from convnet_cli.detect.evaluate import evaluate, load_pair, overlap_fraction
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.recordings import make_batches_from_annotations
    from convnet_cli.review.build import prepare
    from convnet_cli.review.verdicts import VERDICTS_CSV, VERDICTS_TABLE

    t0 = time.time()
    root = a.root
    shutil.rmtree(root, ignore_errors=True)
    made = make_annotated_recordings(os.path.join(root, "demo"), n_heldout=0, seed=a.seed)
    train_rec, train_ann = made["train"]
    # the review set (4 new recordings, their ground truth kept apart: the reviewer's ears) and the test set
    # (4 more, with their tables), both with more of the distractors that fool a detector than the demo's
    rng = np.random.default_rng([a.seed, 99])
    recordings = os.path.join(root, "demo", "recordings")
    review_rec, test_rec, test_ann = (os.path.join(recordings, "review"), os.path.join(recordings, "test"),
                                      os.path.join(root, "test-annotations"))
    truth = {}
    for folder in (review_rec, test_rec, test_ann):
        os.makedirs(folder)
    for part, folder in (("rev", review_rec), ("test", test_rec)):
        for k in range(4):
            x, events = make_recording(rng, 120.0, a.distractors)
            name = f"{part}{k + 1:02d}.flac"
            sf.write(os.path.join(folder, name), x, SR, subtype="PCM_16")
            truth[name] = events
            if part == "test":
                with open(os.path.join(test_ann, f"{part}{k + 1:02d}.Table.1.selections.txt"), "w") as f:
                    f.write(raven_table(events))
    with open(config_path("upcall-features.yaml"), encoding="utf-8") as f:
        features = FeatureSpec.from_dict(yaml.safe_load(f), "upcall-features.yaml")
    opts = dict(features=features, window_hop=1.0, min_overlap=0.5, background="background", background_ratio=1.0,
                batch_size=200, test_fraction=0.15, seed=a.seed, overwrite=True, progress=False, warn=lambda s: None)

    def train(batches, recordings, tables, tag):
        s = make_batches_from_annotations(recordings, batches, tables, **opts)
        rc, run = train_demo(batches, os.path.join(root, f"runs-{tag}"), "calls.yaml", epochs=a.epochs, seed=a.seed, device="cpu",
                             quiet=True)
        assert rc == 0
        return run, s

    def score(run, tag):
        out = os.path.join(root, f"test-{tag}")
        detect(run, [test_rec], out, overwrite=True, progress=False)
        dets, anns, classes, notes = load_pair(out, test_ann)
        return evaluate(dets, anns, classes, 0.5, 0.9, notes).result

    run0, s0 = train(os.path.join(root, "b0"), train_rec, train_ann, "before")
    before = score(run0, "before")

    # detect on the review set, review every detection, fill the verdicts from the ground truth
    rdet = os.path.join(root, "review-detections")
    detect(run0, [review_rec], rdet, overwrite=True, progress=False)
    rdir = os.path.join(root, "review")
    review = prepare(rdet, rdir, per_class=1000, select="top", context=1.0, seed=a.seed, progress=False,
                     echo=lambda s: None)
    verdicts = []
    for it in review.items:
        calls = truth[os.path.basename(it.path)]
        hit = any(lab == it.label and overlap_fraction(it.begin, it.end, b, e) >= 0.5 for b, e, lab, _, _ in calls)
        verdicts.append((it, "true" if hit else "false"))
    with open(os.path.join(rdir, VERDICTS_CSV), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("id", "recording", "begin_s", "end_s", "class", "score", "verdict"))
        for it, v in verdicts:
            w.writerow([it.id, it.recording, f"{it.begin:.3f}", f"{it.end:.3f}", it.label, f"{it.score:.4f}", v])
    prepare(rdet, rdir, per_class=1000, select="top", context=1.0, seed=a.seed, progress=False, echo=lambda s: None)
    n_true = sum(v == "true" for _, v in verdicts)
    n_false = len(verdicts) - n_true

    # train again on the training tables + the verdicts (all of them, and the false ones alone)
    both = os.path.join(root, "tables-with-verdicts")
    shutil.copytree(train_ann, both)
    shutil.copy(os.path.join(rdir, VERDICTS_TABLE), os.path.join(both, "review.verdicts.selections.txt"))
    recs = recordings   # train + review + test; the test recordings have no table here
    run1, s1 = train(os.path.join(root, "b1"), recs, both, "after")
    after = score(run1, "after")
    negs = os.path.join(root, "tables-with-negatives")
    shutil.copytree(train_ann, negs)
    with open(os.path.join(rdir, VERDICTS_TABLE), encoding="utf-8") as f:
        lines = f.read().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split("\t")[-1] == "false"]
    with open(os.path.join(negs, "review.verdicts.selections.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(keep) + "\n")
    run2, s2 = train(os.path.join(root, "b2"), recs, negs, "negatives")
    negatives = score(run2, "negatives")

    def row(tag, r, s):
        o = r["overall"]
        return (f"| {tag} | {s['windows']} ({s.get('hard_negatives', 0)}) | {o['tp']} | {o['fp']} | {o['fn']} | "
                f"{o['precision']:.3f} | {o['recall']:.3f} | {o['average_precision']:.3f} |")

    print(f"review set: {len(verdicts)} detections reviewed: {n_true} true, {n_false} false "
          f"({n_false / max(len(verdicts), 1):.0%} false positives)")
    print("| training set | windows (verified negatives) | TP | FP | FN | precision | recall | AP |")
    print("|---|---|---|---|---|---|---|---|")
    print(row("demo tables (before)", before, s0))
    print(row("+ review verdicts, true and false", after, s1))
    print(row("+ false verdicts only", negatives, s2))
    print(f"{time.time() - t0:.0f} s; test recordings: {test_rec}")


if __name__ == "__main__":
    main()
