"""`convnet predict`: a CSV of class probabilities from a checkpoint, on batch files or on audio."""
from __future__ import annotations

import os

import click

from convnet_cli.commands.audio_flags import reading_flags
from convnet_cli.errors import ConfigError
from convnet_cli.predict.predict import (predict_audio, predict_batches, prepare_out, write_csv,
                                         write_report)
from convnet_cli.train.trainer import parse_range


@click.command("predict")
@click.option("-f", "checkpoint", required=True, type=click.Path(),
              help="Checkpoint file, or a run directory (then best.npz, else the newest).")
@click.argument("audio", nargs=-1, type=click.Path())
@click.option("--data-path", type=click.Path(), help="Batch folder to predict (instead of audio).")
@click.option("--test-range", help="Batches to predict, e.g. 5-6.  [default: the run's test range]")
@click.option("--out", "out", required=True, type=click.Path(), help="CSV file to write.")
@click.option("--report", is_flag=True, help="Print and write report.json (needs true labels).")
@click.option("--multiview", is_flag=True, help="Average predictions over time-shifted crops.")
@click.option("--views", type=click.IntRange(min=2), default=5, show_default=True, help="Views for --multiview.")
@click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Cases (or audio files) per forward pass; bounds memory.")
@click.option("--threshold", "threshold",
              help="Multi-label networks: the probability at or above which a class is predicted: T, CLASS=T,... "
                   "or a thresholds.yaml (evaluate --calibrate's).  [default: 0.5]")
@click.option("--topk", type=click.IntRange(min=1), default=5, show_default=True, help="k of top-k accuracy.")
@click.option("--device", default="cpu", show_default=True, help="cpu, gpu, gpu:N or auto.")
@click.option("--jobs", type=click.IntRange(min=1), help="Processes decoding audio.  [default: 1]")
@reading_flags("Audio: read channel N (1 for the first), every channel on its own (a row each, named <file>#ch<k>), "
               "or the channels averaged.",
               "Audio stored slowed down F times (time-expanded bat recordings): the true rate is the header's times F.")
@click.option("--quiet", is_flag=True, help="Print only errors.")
def command(checkpoint, audio, data_path, test_range, out, report, multiview, views, batch, threshold, topk, device, jobs,
            channel, time_expansion, quiet):
    """Predict with a trained network.

    \b
    convnet predict -f RUNS/ConvNet__... --data-path BATCHES --out preds.csv --report
    convnet predict -f RUNS/ConvNet__.../best.npz recordings/ --out preds.csv
    convnet predict -f RUNS/chorus --data-path BATCHES --out preds.csv --threshold trill=0.7 --report

    For a multi-label network (one logistic unit per class) `predicted` and `true` are the ';'-joined
    classes at or above the threshold, and --report gives per-class AP, ROC AUC and P/R/F1.
    """
    if audio and data_path:
        raise ConfigError("give either audio files/folders or --data-path, not both")
    prepare_out(out, "--out")  # before the work: a folder or an unwritable path is said at once
    from convnet_cli.predict.predict import checkpoint_multi_label
    from convnet_cli.thresholds import parse_thresholds
    from convnet_cli.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(checkpoint)
    names = list(checkpoint.state["label_names"])
    thresholds = None
    if checkpoint_multi_label(checkpoint.state):
        given = parse_thresholds(threshold, names)
        thresholds = [given[n] for n in names]
    elif threshold is not None:
        raise ConfigError(f"--threshold: {checkpoint.path} is a single-label network (its predicted class is the "
                          "most probable one); --threshold applies to multi-label networks")
    n_views = views if multiview else 1
    if audio:
        preds = predict_audio(checkpoint, list(audio), device=device, batch=batch, views=n_views, jobs=jobs,
                              channel=channel, time_expansion=time_expansion)
        for path, reason in preds.skipped:
            click.echo(f"skipped {path}: {reason}", err=True)
    else:
        given = [f for f, v in (("--channel", channel != "mix"), ("--time-expansion", time_expansion != 1.0)) if v]
        if given:
            raise ConfigError(f"{given[0]} applies to audio files; batch files (--data-path) hold features already: "
                              "drop it")
        batches = parse_range(test_range, "--test-range") if test_range else None
        preds = predict_batches(checkpoint, data_path, batches, device=device, batch=batch, views=n_views)
    path = write_csv(preds, out, thresholds)
    if not quiet:
        click.echo(f"wrote {len(preds.filenames)} predictions to {path}")
    if report:
        rep, rpath = write_report(preds, os.path.dirname(os.path.abspath(out)), topk=topk, thresholds=thresholds)
        click.echo(preds.truth.format_report(rep))
        click.echo(f"wrote {rpath}")
