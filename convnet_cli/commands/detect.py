"""`convnet detect`: slide a trained net over recordings and write Raven selection tables (docs/CONFIG.md)."""
from __future__ import annotations

import os

import click

from convnet_cli.commands.audio_flags import options_of, reading_flags
from convnet_cli.detect.events import DEFAULT_SPLIT_DIP
from convnet_cli.parallel import collective_errors, get_world, share_node_cores


@click.command("detect")
@click.option("-f", "checkpoint", type=click.Path(),
              help="Checkpoint file, or a run directory (then best.npz, else the newest).")
@click.argument("recordings", nargs=-1, type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the selection tables, detections.csv and done.jsonl.")
@click.option("--window-hop", "--hop", "window_hop", type=float,
              help="Seconds between window starts, at least 0.001 (--hop: the same).  [default: the training "
                   "window_hop, else half the window]")
@click.option("--threshold", help="Probability an event needs: T for every class, CLASS=T,..., or a thresholds.yaml "
                                 "(evaluate --calibrate's)  [default: 0.5]")
@click.option("--from-scores", "from_scores", type=click.Path(file_okay=False), metavar="OUT_DIR",
              help="Make the events and tables again from an earlier detect --scores run's scores.csv with these "
                   "thresholds and event settings, without reading audio or running the net (no -f, no RECORDINGS); "
                   "settings not given are that run's.")
@click.option("--classes", help="Classes to report, comma-separated.  [default: all but a background class; every "
                                "class of a multi-label network]")
@click.option("--merge-gap", type=float, default=None,
              help="Join windows of a class less than this many seconds apart into one event.  [default: 0]")
@click.option("--split-dip", type=float, default=None,
              help="Split a run of overlapping windows where the score dips at least this far below the highest "
                   "window on each side (calls in a chorus); the events meet at the dip window's centre. 0: never.  "
                   f"[default: {DEFAULT_SPLIT_DIP:g}]")
@click.option("--max-event", type=float,
              help="Cut an event longer than this many seconds into equal pieces no longer than it (pieces with "
                   "no window above the threshold are dropped).  [default: no cap]")
@click.option("--scores", is_flag=True, help="Also write scores.csv: every window's class probabilities.")
@click.option("--combined", is_flag=True, help="Also write detections.selections.txt: one table for all recordings.")
@click.option("--resume", is_flag=True, help="Skip recordings done.jsonl lists and that have not changed.")
@click.option("--overwrite", is_flag=True, help="Delete an earlier detect's own files in --out first (detect.json, "
              "the journals, the CSVs and the tables done.jsonl names; other files stay).")
@click.option("--batch", type=click.IntRange(min=1), default=128, show_default=True,
              help="Windows per forward pass; bounds memory (the upcall net: ~220 MB in all at 128, ~370 at 256).")
@click.option("--device", default="cpu", show_default=True, help="cpu, gpu, gpu:N or auto.")
@reading_flags("Read channel N (1 for the first), every channel on its own (each event's channel in the tables' "
               "Channel column and a channel column in detections.csv), or the channels averaged.",
               "The recordings were stored slowed down F times (time-expanded bat recordings): the true rate is the "
               "header's times F, and every time and frequency written is real time.")
@click.option("--quiet", is_flag=True, help="No progress bar; print only errors and the summary line.")
def command(checkpoint, recordings, out_dir, from_scores, quiet, **flags):
    """Detect events in recordings of any length with a trained network.

    \b
    convnet detect -f RUNS/ConvNet__... recordings/ --out detections/
    convnet detect -f RUNS/ConvNet__... recordings/ --out detections/ --threshold upcall=0.8 --merge-gap 1 --resume
    convnet detect --from-scores detections/ --threshold eval/thresholds.yaml --out detections-calibrated/
    """
    if from_scores is not None:
        return _from_scores(from_scores, checkpoint, recordings, out_dir, **flags)
    if checkpoint is None or not recordings:
        raise click.UsageError("give -f RUN and RECORDINGS (or --from-scores OUT_DIR to re-threshold an earlier run)")
    from convnet_cli.detect.detect import DetectOptions, detect

    def echo(msg):
        click.echo(msg, err=True)

    world = get_world()
    share_node_cores(world)
    with collective_errors(world):  # under mpiexec: the recordings split over the processes; rank 0 reports
        options = options_of(DetectOptions, flags, progress=not quiet)   # a flag is a DetectOptions field
        s = detect(checkpoint, list(recordings), out_dir, options=options, echo=echo, world=world)
    if not world.is_root:
        return 0
    for name, reason in s.skipped:
        click.echo(f"skipped {name}: {reason}", err=True)
    from convnet_cli.progress import audio_span

    rate = f", {s.realtime:,.0f}x real time" if s.audio_s and s.seconds else ""
    click.echo(f"{s.done} recording(s), {audio_span(s.audio_s)} of audio: {s.detections} detection(s) in "
               f"{s.seconds:.1f} s"
               f"{rate}" + (f"; {s.resumed} already done" if s.resumed else "")
               + (f"; {len(s.skipped)} skipped (see {os.path.join(out_dir, 'skipped.txt')})" if s.skipped else ""))
    click.echo(f"tables: {out_dir}{os.sep}*.selections.txt; all detections: {s.files.get('detections')}")
    if s.files.get("combined"):
        click.echo(f"combined table: {s.files['combined']}")
    if s.files.get("scores"):
        click.echo(f"window scores: {s.files['scores']}")
    if s.skipped and s.done + s.resumed == 0:
        click.echo("convnet: error: none of the recordings could be read", err=True)
        return 1
    return 0


def _from_scores(src, checkpoint, recordings, out_dir, window_hop=None, threshold=None, classes=None, merge_gap=None,
                 split_dip=None, max_event=None, scores=False, combined=False, resume=False, overwrite=False,
                 channel="mix", time_expansion=1.0, **unused):
    """detect --from-scores: detect/rescore.py. `unused`: the flags of running the net (--batch, --device),
    which do not apply here."""
    from convnet_cli.detect.rescore import detect_from_scores

    given = [flag for flag, v in (("-f", checkpoint), ("RECORDINGS", recordings), ("--window-hop", window_hop),
                                  ("--scores", scores), ("--resume", resume), ("--channel", channel != "mix"),
                                  ("--time-expansion", time_expansion != 1.0)) if v]
    if given:
        raise click.UsageError(f"{given[0]} does not apply with --from-scores (the windows and their scores are "
                               "the earlier run's); drop it")
    s = detect_from_scores(src, out_dir, threshold=threshold, classes=classes, merge_gap=merge_gap,
                           split_dip=split_dip, max_event=max_event, combined=combined, overwrite=overwrite)
    click.echo(f"{s.recordings} recording(s), {s.windows:,} windows from {src}: {s.detections} detection(s); "
               f"tables: {out_dir}{os.sep}*.selections.txt; all detections: {s.files['detections']}")
    return 0
