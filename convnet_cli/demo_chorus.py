"""`convnet demo --chorus`: several species at once. Synthetic recordings of a chorus of four call types
that often overlap -> make-batches --annotations --multi-label -> train a multi-label net (cost.bce) ->
detect (every class on its own) -> evaluate per class; and the same with single-label windows (the largest
overlap wins, softmax + logreg) beside it, to show what multi-label finds that single-label cannot: both
calls of an overlapping pair.

The recordings: 90-s files at 8 kHz of pink-ish noise whose level drifts, with four call types in bands of
their own (so that two calls at once are both visible in a spectrogram):
- `whistle`: a steady tone of 0.5-1.2 s at 1.2-1.6 kHz;
- `upsweep`: a rise from 0.3 to 0.9 kHz over 0.4-0.8 s;
- `trill`: a tone at 2.2-2.6 kHz, amplitude-modulated at 15-25 Hz, 0.4-1.0 s;
- `buzz`: a train of broadband pulses in 3.0-3.8 kHz, 0.3-0.7 s.
Calls come in a chorus: about half of them start while a call of another type is sounding.
"""
from __future__ import annotations

import os

import numpy as np

SR = 8000
CALL_TYPES = ("buzz", "trill", "upsweep", "whistle")
BANDS = {"whistle": (1100.0, 1700.0), "upsweep": (250.0, 1000.0), "trill": (2100.0, 2700.0), "buzz": (2900.0, 3900.0)}


def _call(rng, label):
    """(samples, duration s) of one call."""
    if label == "whistle":
        dur = rng.uniform(0.5, 1.2)
        t = np.arange(int(dur * SR)) / SR
        x = np.sin(2 * np.pi * rng.uniform(1200, 1600) * t)
    elif label == "upsweep":
        dur = rng.uniform(0.4, 0.8)
        t = np.arange(int(dur * SR)) / SR
        f = 300 + 600 * (t / dur) ** rng.uniform(0.8, 1.6)
        x = np.sin(2 * np.pi * np.cumsum(f) / SR)
    elif label == "trill":
        dur = rng.uniform(0.4, 1.0)
        t = np.arange(int(dur * SR)) / SR
        x = np.sin(2 * np.pi * rng.uniform(2200, 2600) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(15, 25) * t))
    else:
        from scipy.signal import butter, sosfilt

        dur = rng.uniform(0.3, 0.7)
        n = int(dur * SR)
        x = np.zeros(n)
        period = int(SR / rng.uniform(40, 70))
        for i in range(0, n - 40, period):
            x[i:i + 40] += rng.standard_normal(40) * np.hanning(40)
        x = sosfilt(butter(4, (3000, 3800), btype="band", fs=SR, output="sos"), x) * 4
    env = np.sin(np.pi * np.arange(len(x)) / len(x)) ** 0.5
    return x * env, len(x) / SR


def make_recording(rng, seconds: float = 90.0):
    """(signal float32 at SR, [(begin, end, label, low Hz, high Hz)])."""
    from scipy.signal import lfilter

    n = int(seconds * SR)
    noise = lfilter([1.0], [1.0, -0.8], rng.standard_normal(n))
    level = np.interp(np.arange(n), np.linspace(0, n, 6), rng.uniform(0.5, 1.5, 6))
    x = 0.15 * level * noise / (noise.std() + 1e-9)
    events = []
    t = rng.uniform(0.5, 2.0)
    while t < seconds - 2.0:
        label = CALL_TYPES[int(rng.integers(0, len(CALL_TYPES)))]
        call, dur = _call(rng, label)
        i = int(t * SR)
        x[i:i + len(call)] += rng.uniform(0.3, 0.6) * level[i] * call
        events.append((t, t + dur, label) + BANDS[label])
        # half of the next calls start while this one sounds (a chorus), the others after a pause
        t += rng.uniform(0.1, 0.7) * dur if rng.random() < 0.5 else dur + rng.uniform(0.8, 2.5)
    return (0.5 * x / (np.abs(x).max() + 1e-9)).astype(np.float32), events


def make_chorus_recordings(root: str, n_train: int = 8, n_heldout: int = 3, seed: int = 0,
                           seconds: float = 90.0) -> dict:
    """root/recordings/{train,heldout}/chorusNN.flac and root/annotations/{train,heldout}/*.Table.1.selections.txt;
    returns {'train': (recordings, tables), 'heldout': (...), 'calls': n, 'overlapping': n}."""
    from convnet_cli.demo_recordings import write_annotated_sets

    rng = np.random.default_rng([seed, 17])
    out, every = write_annotated_sets(root, {"train": n_train, "heldout": n_heldout},
                                      lambda: make_recording(rng, seconds), "chorus", SR, "Species")
    out.update(calls=sum(len(events) for events in every),
               overlapping=sum(len(overlapping_pairs([(b, e, lab) for b, e, lab, _, _ in events]))
                               for events in every))
    return out


def overlapping_pairs(calls) -> list:
    """[(i, j)] of calls [(begin, end, label)] of different labels that sound at the same time."""
    pairs = []
    for i, (b0, e0, l0) in enumerate(calls):
        for j in range(i + 1, len(calls)):
            b1, e1, l1 = calls[j]
            if l0 != l1 and min(e0, e1) - max(b0, b1) > 0:
                pairs.append((i, j))
    return pairs


def pairs_found(anns, dets, min_overlap: float = 0.5) -> tuple:
    """(overlapping pairs of annotations whose two calls are both detected, overlapping pairs): a call counts
    as detected when a detection of its class overlaps it by `min_overlap` of the shorter of the two."""
    from convnet_cli.detect.evaluate import overlap_fraction

    found = total = 0
    for rec, calls in anns.items():
        calls = [(a.begin, a.end, a.label) for a in calls]
        hits = [any(d.label == lab and overlap_fraction(b, e, d.begin, d.end) >= min_overlap for d in dets.get(rec, ()))
                for b, e, lab in calls]
        for i, j in overlapping_pairs(calls):
            total += 1
            found += hits[i] and hits[j]
    return found, total


def single_label_twin(layer_def_text: str) -> str:
    """The chorus net with a softmax and cost.logreg in place of its logistic outputs and cost.bce (and one more
    output, for the background class): the same convolutions trained on single-label windows."""
    import yaml

    from convnet_cli.data.targets import MultiLabelTargets
    from convnet_cli.layers.registry import layer_class

    def multi_label_cost(definition):   # the cost that trains on sets of classes, asked of its class
        cls = layer_class(str(definition.get("type")))
        return cls is not None and MultiLabelTargets in getattr(cls, "trains_on", ())

    layers = yaml.safe_load(layer_def_text)
    cost = next(n for n, l in layers.items() if multi_label_cost(l))
    labels, fc = layers[cost]["inputs"]
    layers[fc].pop("neuron", None)
    layers[fc]["outputs"] = int(layers[fc]["outputs"]) + 1
    del layers[cost]
    layers["probs"] = {"type": "softmax", "inputs": fc}
    layers["logprob"] = {"type": "cost.logreg", "inputs": [labels, "probs"]}
    return yaml.safe_dump(layers, sort_keys=False)


def run(root: str, epochs: int = 15, device: str = "cpu", seed: int = 0, quiet: bool = False, say=print,
        n_train: int = 8, n_heldout: int = 3, seconds: float = 90.0) -> dict:
    """Both pipelines on the chorus recordings (n_train + n_heldout of `seconds` each): {'multi': result,
    'single': result, 'seconds': s}, a result {'evaluation', 'pairs_found', 'pairs', 'run', 'detections'}."""
    import time

    from convnet_cli.demo import config_path
    from convnet_cli.detect.detect import detect
    from convnet_cli.detect.evaluate import evaluate, load_pair
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.recordings import make_batches_from_annotations
    from convnet_cli.train.trainer import TrainOptions, start

    t0 = time.time()
    say(f"1/4 synthetic chorus recordings (8 kHz, {n_train} x {seconds:g} s to train on, {n_heldout} x {seconds:g} s "
        f"held out) -> {root}")
    made = make_chorus_recordings(root, n_train, n_heldout, seed=seed, seconds=seconds)
    (train_rec, train_ann), (held_rec, held_ann) = made["train"], made["heldout"]
    say(f"    {made['calls']} calls of {len(CALL_TYPES)} types, {made['overlapping']} pairs sounding at once")
    spec = FeatureSpec.from_file(config_path("chorus-features.yaml"), {})
    with open(config_path("chorus.yaml"), encoding="utf-8") as f:
        multi_def = f.read()
    defs = {"multi": (multi_def, True), "single": (single_label_twin(multi_def), False)}
    results = {}
    for step, (tag, (text, multi)) in enumerate(defs.items(), 2):
        say(f"{step}/4 {'multi-label' if multi else 'single-label'}: make-batches --annotations"
            f"{' --multi-label' if multi else ''}, train, detect, evaluate")
        batches = os.path.join(root, f"batches-{tag}")
        make_batches_from_annotations(train_rec, batches, train_ann, features=spec, window_hop=0.5, min_overlap=0.5,
                                      background_ratio=1.0, batch_size=400, test_fraction=0.2, seed=seed,
                                      multi_label=multi, overwrite=True, progress=not quiet, warn=lambda s: None)
        layer_def = os.path.join(root, f"chorus-{tag}.yaml")
        with open(layer_def, "w", encoding="utf-8") as f:
            f.write(text)
        runs = os.path.join(root, f"runs-{tag}")
        o = TrainOptions(data_path=batches, save_path=runs, layer_def=layer_def,
                         layer_params=config_path("chorus-params.yaml"), epochs=epochs, mini=32, device=device,
                         seed=seed, quiet=quiet)
        if start(o):
            raise SystemExit(1)
        run_dir = sorted(os.path.join(runs, d) for d in os.listdir(runs) if d.startswith("ConvNet__"))[-1]
        out = os.path.join(root, f"detections-{tag}")
        detect(run_dir, [held_rec], out, overwrite=True, device=device, progress=not quiet)
        dets, anns, classes, notes = load_pair(out, held_ann)
        classes = [c for c in CALL_TYPES if c in classes] or list(CALL_TYPES)
        ev = evaluate(dets, anns, classes, 0.5, 0.9, notes)
        found, total = pairs_found(anns, dets)
        results[tag] = {"evaluation": ev.result, "pairs_found": found, "pairs": total, "run": run_dir,
                        "detections": out}
    results["seconds"] = time.time() - t0
    return results


def main(root: str, epochs: int, device: str, seed: int, quiet: bool, **sizes) -> int:
    """`convnet demo --chorus`: run() and its table on stdout. sizes: run()'s n_train, n_heldout, seconds."""
    import click

    def say(msg):
        if not quiet:
            click.echo(msg, err=True)

    r = run(root, epochs=epochs, device=device, seed=seed, quiet=quiet, say=say, **sizes)

    def ap(v):
        return "-" if v is None else f"{v:.3f}"

    click.echo("")
    click.echo("held-out chorus: per-class AP (event level), and the pairs of calls sounding at once both found")
    click.echo(f"{'':12}{'multi-label':>14}{'single-label':>14}")
    for c in CALL_TYPES:
        m, s = (r[t]["evaluation"]["classes"].get(c, {}).get("average_precision") for t in ("multi", "single"))
        click.echo(f"{c:12}{ap(m):>14}{ap(s):>14}")
    for key, what in (("average_precision", "overall AP"), ("recall", "recall"), ("precision", "precision")):
        m, s = (r[t]["evaluation"]["overall"][key] for t in ("multi", "single"))
        click.echo(f"{what:12}{ap(m):>14}{ap(s):>14}")
    pm, ps = (f"{r[t]['pairs_found']}/{r[t]['pairs']}" for t in ("multi", "single"))
    click.echo(f"{'pairs found':12}{pm:>14}{ps:>14}")
    click.echo("")
    click.echo(f"recordings:  {os.path.join(root, 'recordings')}  (annotations: {os.path.join(root, 'annotations')})")
    click.echo(f"multi-label run: {r['multi']['run']}; its Raven tables: {r['multi']['detections']}")
    click.echo(f"{r['seconds']:.0f} s in all")
    return 0
