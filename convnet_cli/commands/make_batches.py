"""`convnet make-batches AUDIO_DIR BATCH_DIR`: audio folders (or a folder + CSV) -> cuda-convnet batch files."""
from __future__ import annotations

import functools
import os

import click

from convnet_cli.commands.audio_flags import options_of, reading_flags
from convnet_cli.errors import ConfigError
from convnet_cli.ingest.features import KINDS, WINDOWS, FeatureSpec
from convnet_cli.data.writer import DTYPES
from convnet_cli.ingest.make_batches import ClipOptions, make_batches
from convnet_cli.ingest.noise import noise_options
from convnet_cli.ingest.recordings import AnnotationOptions, make_batches_from_annotations
from convnet_cli.ingest.recordings import summary_line as windows_summary
from convnet_cli.ingest.sharded import make_batches_sharded
from convnet_cli.parallel import collective_errors, get_world, share_node_cores


def _fmax(value):
    if value is None:
        return None
    if value.strip().lower() in ("null", "none", "nyquist"):
        return "null"
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--fmax {value!r}: expected a frequency in Hz, or null for the Nyquist frequency") from None


@click.command("make-batches")
@click.argument("audio_dir")
@click.argument("batch_dir")
@click.option("--labels", "labels_csv", metavar="FILE.csv",
              help="Flat folder + CSV: a header and columns clip_name,label (or filename,label).")
@click.option("--file-col", metavar="NAME", help="CSV column with the file names (default: clip_name or filename).")
@click.option("--label-col", metavar="NAME", help="CSV column with the labels (default: label).")
@click.option("--no-labels", is_flag=True, help="Unlabeled set (for prediction): labels stored as -1.")
@click.option("--label-names", metavar="A,B,…",
              help="Fix the classes and their order (e.g. those of a training set); other labels are an error.")
@click.option("--features", "features_file", metavar="FILE.yaml", help="Feature settings (keys of the flags below).")
@click.option("--sample-rate", type=int, help="Resample every clip to this rate, Hz [16000].")
@click.option("--duration", type=float, help="Seconds per clip: longer center-cropped, shorter zero-padded [2.0].")
@click.option("--kind", type=click.Choice(KINDS), help="Feature kind [logmel].")
@click.option("--n-fft", type=int, help="STFT window, samples [512].")
@click.option("--hop", type=int, help="STFT hop, samples [160].")
@click.option("--window", type=click.Choice(WINDOWS), help="Window function [hann].")
@click.option("--n-mels", type=int, help="Mel bands [64].")
@click.option("--fmin", type=float, help="Lowest mel band edge, Hz [0].")
@click.option("--fmax", metavar="HZ|null", help="Highest mel band edge, Hz [null = Nyquist].")
@click.option("--n-mfcc", type=int, help="MFCC coefficients for --kind mfcc [20].")
@click.option("--batch-size", type=int, default=1000, show_default=True, help="Cases per batch file.")
@click.option("--test-fraction", type=float, default=None,
              help="The last ceil(F*K) batches form the test range [0.2; 0 with --no-labels].")
@click.option("--split-by", metavar="REGEX",
              help="Keep clips whose names share the regex's first group on one side of the split.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the shuffle and split.")
@click.option("--jobs", type=int, default=None, help="Decoding processes [all cores].")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="Stored data type; uint8 is scaled per batch (data_offset + data_scale * q).")
@click.option("--overwrite", is_flag=True, help="Replace the batch files already in BATCH_DIR.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--noise-dir", metavar="DIR",
              help="Add noisy copies of every training clip: a random stretch of a random recording of DIR mixed "
                   "in at a random SNR (the test range is never augmented).")
@click.option("--noise-snr", metavar="LO,HI", help="With --noise-dir: SNR range of the copies, dB [0,20].")
@click.option("--copies", type=int, metavar="K", help="Noisy copies per training clip, besides the clean one [1].")
@click.option("--gain", metavar="LO,HI", help="Scale each copy by a random gain in this range, dB (also without "
                                              "--noise-dir: gain-only copies).")
@click.option("--annotations", metavar="TABLES",
              help="Long recordings: Raven selection tables (a file or folder) or a CSV filename,start,end,label; "
                   "AUDIO_DIR holds the recordings and the cases are windows labelled from the tables.")
@click.option("--window-hop", type=float, metavar="S", help="With --annotations: seconds between windows [duration/2].")
@click.option("--min-overlap", type=float, metavar="F",
              help="With --annotations: an annotation must cover this fraction of the shorter of it and a window "
                   "to label the window [0.5].")
@click.option("--background", metavar="LABEL", help="With --annotations: label of windows without annotations "
                                                    "[background].")
@click.option("--background-ratio", type=float, metavar="R",
              help="With --annotations: keep at most R background windows per class window, drawn with --seed "
                   "[all]; with --multi-label: R windows without any class per window that holds one.")
@click.option("--multi-label", is_flag=True,
              help="Every case a set of classes (overlapping calls): with --annotations every class whose "
                   "annotation covers --min-overlap of a window is present (touched below it: unknown, masked), no "
                   "background class; with --labels a labels column of ';'-separated classes or one 0/1 column per "
                   "class. Batch files get `targets`; train the net with cost.bce on logistic outputs.")
@click.option("--normalize", type=click.Choice(("pixel", "band", "global")),
              help="The statistics stored and applied: one mean/std per value of a case (pixel, cuda-convnet's), per "
                   "frequency row over time and cases (band), or one for all (global) [band].")
@reading_flags("Read channel N of every file (1 for the first), every channel as a stream of its own (cases named "
               "<file>#ch<k>; with --annotations a table's Channel column labels its channel only), or the channels "
               "averaged.",
               "The recordings were stored slowed down F times (time-expanded bat recordings): their true rate is the "
               "header's times F; every time and frequency is real time.")
def command(**opts):
    """Turn AUDIO_DIR (a folder per class, or a flat folder with --labels) into batch files in BATCH_DIR.

    With --annotations TABLES, AUDIO_DIR holds long recordings (RECORDINGS) and the cases are windows of
    them labelled from Raven selection tables or a CSV (--label-col then names the tables' label column).

    Under `mpiexec -n K` the clips (or the recordings' windows) are decoded by K processes (BATCH_DIR on a
    file system all of them see); the output is that of one process."""
    world = get_world()
    share_node_cores(world)
    with collective_errors(world):
        s = _make(world, **opts)
    if s is not None and world.is_root:
        click.echo(windows_summary(s) if opts["annotations"] is not None else summary_line(s))
        if s.get("noise"):
            written = f"{s['copies']} copies written " if "copies" in s else ""
            click.echo(f"make-batches: training range augmented: {written}({s['noise']})")


# the flags that are keys of the features YAML (FeatureSpec), given on the command line over the file's
FEATURE_FLAGS = ("sample_rate", "duration", "kind", "n_fft", "hop", "window", "n_mels", "fmin", "fmax", "n_mfcc",
                 "normalize")


def _make(world, audio_dir, batch_dir, features_file, quiet, **flags):
    """The summary of the batch set made (None on a rank that made none). Every other flag is a field of the
    pipeline's options (ingest/make_batches.py ClipOptions, ingest/recordings.py AnnotationOptions) or a
    features key, and goes there by its name."""
    f = flags
    spec = FeatureSpec.from_file(features_file, {k: _fmax(f[k]) if k == "fmax" else f[k] for k in FEATURE_FLAGS})
    set_values = dict(
        test_fraction=(0.0 if f["no_labels"] else 0.2) if f["test_fraction"] is None else f["test_fraction"],
        label_names=[n.strip() for n in f["label_names"].split(",")] if f["label_names"] else None,
        progress=not quiet)
    noise = noise_options(f["noise_dir"], f["noise_snr"], f["copies"], f["gain"], f["seed"])
    if noise is not None and f["no_labels"]:
        raise ConfigError("--noise-dir/--gain copies augment a training range; an unlabeled set (--no-labels) "
                          "has none: drop them")
    if f["multi_label"] and f["background"] is not None:
        raise ConfigError("--background names the class of windows without annotations; a --multi-label set has "
                          "none (a window without a class is all absent): drop --background")
    if f["annotations"] is not None:
        for flag, given in (("--labels", f["labels_csv"]), ("--file-col", f["file_col"]),
                            ("--no-labels", f["no_labels"])):
            if given:
                raise ConfigError(f"{flag} does not apply with --annotations (the tables give the labels); drop it")
        options = options_of(AnnotationOptions, f, **set_values)
        s = make_batches_from_annotations(audio_dir, batch_dir, f["annotations"], features=spec,
                                          warn=lambda line: click.echo(line, err=True), noise=noise, world=world,
                                          options=options)
        world.barrier()  # the other ranks wait for rank 0's batch files
        return _noted(s, noise)
    given = [flag for flag, v in (("--window-hop", f["window_hop"]), ("--min-overlap", f["min_overlap"]),
                                  ("--background", f["background"]), ("--background-ratio", f["background_ratio"]))
             if v is not None]
    if given:
        raise ConfigError(f"{given[0]} applies to long recordings with --annotations TABLES; "
                          "give --annotations too, or drop it")
    make = make_batches if world.size == 1 else functools.partial(make_batches_sharded, world)
    s = make(audio_dir, batch_dir, options=options_of(ClipOptions, f, **set_values, features=spec, noise=noise))
    return _noted(s, noise)


def _noted(summary, noise):
    """The summary with what the noisy copies were made of, for the closing line."""
    if summary is not None and noise is not None:
        summary["noise"] = noise.describe()
    return summary


def _range(r, cases):
    if not r:
        return "none"
    return f"{r[0]}-{r[1]} ({cases} cases)"


def summary_line(s: dict) -> str:
    shape = "x".join(str(v) for v in s["shape"])
    batches = "batch" if s["batches"] == 1 else "batches"
    line = (f"make-batches: {s['read']} files read, {s['skipped']} skipped, {s['classes']} classes, "
            f"{s['batches']} {batches} (train {_range(s['train_range'], s['train_cases'])}, "
            f"test {_range(s['test_range'], s['test_cases'])}), case shape {shape}, "
            f"{s['seconds']:.1f} s -> {s['batch_dir']}")
    if s["skipped"]:
        line += f"; skipped files listed in {os.path.join(s['batch_dir'], 'skipped.txt')}"
    for key, what in (("ignored", "non-audio file"), ("outside_classes", "audio file outside the class folders")):
        if s.get(key):
            n = s[key]
            line += f"; {n} {what.replace('file', 'files', 1) if n != 1 else what} ignored"
    return line
