"""Front ends side by side (SPEC 19): logmel against pcen, and the three normalisations (pixel, band,
global), each trained and scored the same way in one run.

- recordings: `convnet demo --recordings`' synthetic set (2 kHz; noise whose level and colour drift over the
  minutes, ships, distractors; upcalls and gunshots): make-batches --annotations, train layer_configs/calls.yaml,
  detect and evaluate on the held-out recordings: event AP per class and overall;
- keywords (with --keywords, needs ../shared/audio/keywords): make-batches of the clips, train
  layer_configs/keywords.yaml, predict the test clips: accuracy.

    python benchmarks/bench_front_ends.py [--root /tmp/fe] [--epochs 15] [--keywords DIR --kw-epochs 8]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def recordings_ap(root, kind, normalize, epochs, seed):
    import yaml

    from convnet_cli.demo import config_path, train_demo
    from convnet_cli.detect.detect import detect
    from convnet_cli.detect.evaluate import evaluate, load_pair
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.recordings import make_batches_from_annotations

    with open(config_path("upcall-features.yaml"), encoding="utf-8") as f:
        feats = dict(yaml.safe_load(f), kind=kind, normalize=normalize)
    spec = FeatureSpec.from_dict(feats, "bench")
    tag = f"{kind}-{normalize}"
    train_rec, train_ann = os.path.join(root, "demo", "recordings", "train"), os.path.join(root, "demo", "annotations",
                                                                                          "train")
    held_rec, held_ann = (os.path.join(root, "demo", "recordings", "heldout"),
                          os.path.join(root, "demo", "annotations", "heldout"))
    batches = os.path.join(root, f"b-{tag}")
    make_batches_from_annotations(train_rec, batches, train_ann, features=spec, window_hop=1.0, min_overlap=0.5,
                                  background="background", background_ratio=1.0, batch_size=200, test_fraction=0.15,
                                  seed=seed, overwrite=True, progress=False, warn=lambda s: None)
    rc, run = train_demo(batches, os.path.join(root, f"runs-{tag}"), "calls.yaml", epochs=epochs, seed=seed,
                         device="cpu", quiet=True)
    assert rc == 0
    out = os.path.join(root, f"det-{tag}")
    detect(run, [held_rec], out, overwrite=True, progress=False)
    dets, anns, classes, notes = load_pair(out, held_ann)
    return evaluate(dets, anns, classes, 0.5, 0.9, notes).result


def keywords_accuracy(root, kw_dir, normalize, epochs, seed):
    from convnet_cli.demo import config_path
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.make_batches import make_batches
    from convnet_cli.metrics import classification_report
    from convnet_cli.predict.predict import predict_batches
    from convnet_cli.train.trainer import TrainOptions, start

    spec = FeatureSpec.from_file(config_path("keywords-features.yaml"), {"normalize": normalize})
    batches = os.path.join(root, f"kw-{normalize}")
    make_batches(os.path.join(kw_dir, "train"), batches, features=spec, batch_size=400, test_fraction=0.2, seed=seed,
                 overwrite=True, progress=False)
    save = os.path.join(root, f"kw-runs-{normalize}")
    shutil.rmtree(save, ignore_errors=True)
    o = TrainOptions(data_path=batches, save_path=save, layer_def=config_path("keywords.yaml"),
                     layer_params=config_path("keywords-params.yaml"), epochs=epochs, mini=64, seed=seed, quiet=True)
    assert start(o) == 0
    (run,) = os.listdir(save)
    test_batches = os.path.join(root, f"kw-test-{normalize}")
    make_batches(os.path.join(kw_dir, "test"), test_batches, features=spec, batch_size=400, test_fraction=0.0,
                 seed=seed, overwrite=True, progress=False, label_names=None)
    from convnet_cli.data.batch_files import BatchSet

    p = predict_batches(os.path.join(save, run), test_batches, BatchSet(test_batches).batch_numbers)
    return classification_report(p.probs, p.labels, p.label_names)["accuracy"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="/tmp/convnet-front-ends")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keywords", help="the keywords folder (train/, test/), e.g. ../shared/audio/keywords")
    ap.add_argument("--kw-epochs", type=int, default=8)
    a = ap.parse_args()

    from convnet_cli.demo_recordings import make_annotated_recordings

    t0 = time.time()
    os.makedirs(a.root, exist_ok=True)
    make_annotated_recordings(os.path.join(a.root, "demo"), seed=a.seed)
    print(f"recordings (demo --recordings set, {a.epochs} epochs of calls.yaml, held-out event AP):")
    print("| features | normalize | upcall AP | gunshot AP | overall AP | precision | recall |")
    print("|---|---|---|---|---|---|---|")
    for kind, norm in (("logmel", "pixel"), ("logmel", "band"), ("logmel", "global"), ("pcen", "pixel"),
                       ("pcen", "band"), ("pcen", "global")):
        r = recordings_ap(a.root, kind, norm, a.epochs, a.seed)
        c, o = r["classes"], r["overall"]
        print(f"| {kind} | {norm} | {c['upcall']['average_precision']:.3f} | {c['gunshot']['average_precision']:.3f} | "
              f"{o['average_precision']:.3f} | {o['precision']:.3f} | {o['recall']:.3f} |", flush=True)
    if a.keywords:
        print(f"\nkeywords ({a.kw_epochs} epochs of keywords.yaml, accuracy on the 400 test clips):")
        print("| normalize | accuracy |")
        print("|---|---|")
        for norm in ("pixel", "band", "global"):
            print(f"| {norm} | {keywords_accuracy(a.root, a.keywords, norm, a.kw_epochs, a.seed):.3f} |", flush=True)
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
