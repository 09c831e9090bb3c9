"""`convnet evaluate`: event-level precision, recall and average precision of detections (docs/CONFIG.md)."""
from __future__ import annotations

import os

import click


@click.command("evaluate")
@click.argument("detections", type=click.Path())
@click.argument("annotations", required=False, type=click.Path())
@click.option("--min-overlap", type=float, default=0.5, show_default=True,
              help="Overlap, as a fraction of the shorter of the two, that makes a detection match an annotation.")
@click.option("--classes", help="Classes to score, comma-separated.  [default: the classes detect reported]")
@click.option("--target-precision", type=float, default=0.9, show_default=True,
              help="Report the lowest score threshold reaching this precision, and the recall there.")
@click.option("--label-col", help="Annotation column holding the class.  [default: Annotation, Class, Label, "
                                  "Species or Call Type]")
@click.option("--detections-label-col", metavar="NAME",
              help="With Raven tables of another detector as DETECTIONS: their column holding the class "
                   "(BirdNET-Analyzer's: 'Species Code' or 'Common Name'; its Confidence is the score).  "
                   "[default: Annotation, Class, Label, Species or Call Type]")
@click.option("--out", "out_dir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Folder for evaluation.json and pr_curve.png.")
@click.option("--calibrate", metavar="precision=P|f1",
              help="Also write DIR/thresholds.yaml: per class the lowest score threshold reaching precision P, or "
                   "the F1-best one (detect and predict take it: --threshold DIR/thresholds.yaml).")
@click.option("--quiet", is_flag=True, help="Print only the table.")
def command(detections, annotations, min_overlap, classes, target_precision, label_col, detections_label_col, out_dir,
            calibrate, quiet):
    """Score detections (a detect OUT_DIR, its detections.csv, or Raven tables) against annotations
    (Raven tables, a folder of them, or a CSV filename,start,end,label).

    \b
    convnet evaluate detections/ annotations/ --out eval/
    convnet evaluate review/         # a convnet review folder: the reviewed precision per class
    """
    if annotations is None:  # DETECTIONS is a review folder (verdicts.csv): see convnet_cli/commands/review.py
        rule = None
        if calibrate:
            from convnet_cli.detect.evaluate import parse_calibrate

            rule = parse_calibrate(calibrate)
            if rule[0] == "f1":
                raise click.UsageError("--calibrate f1 needs the ANNOTATIONS (F1 needs the recall, which verdicts "
                                       "on detections cannot give); a review folder calibrates to precision=P")
        from convnet_cli.commands.review import evaluate_review_dir
        return evaluate_review_dir(detections, out_dir, classes, quiet, rule, calibrate)
    from convnet_cli.detect.evaluate import (calibrate as calibrate_thresholds, evaluate, format_table, load_pair,
                                             parse_calibrate, plot_pr, write_json)
    from convnet_cli.fileio import make_out_dir
    from convnet_cli.thresholds import THRESHOLDS_FILE

    rule = parse_calibrate(calibrate) if calibrate else None
    make_out_dir(out_dir, "--out")   # before the work: a read-only --out is one line, not a lost evaluation
    dets, anns, wanted, notes = load_pair(detections, annotations, label_col=label_col, classes=classes,
                                          detections_label_col=detections_label_col)
    ev = evaluate(dets, anns, wanted, min_overlap, target_precision, notes)
    if not quiet:
        for n in ev.notes:
            click.echo(f"note: {n}", err=True)
    click.echo(format_table(ev.result))
    path = write_json(ev.result, out_dir, ev.notes)
    if not quiet:
        click.echo(f"wrote {path}")
    if rule is not None:
        chosen, cal_notes = calibrate_thresholds(ev.curves, wanted, rule)
        how = (f"precision >= {rule[1]:g}: the lowest score threshold reaching it" if rule[0] == "precision"
               else "the threshold of the highest F1")
        from convnet_cli.commands.review import write_calibrated

        write_calibrated(os.path.join(out_dir, THRESHOLDS_FILE), chosen, cal_notes,
                         f"convnet evaluate --calibrate {calibrate}: per class {how},\n"
                         f"over {detections} against {annotations} (min overlap {min_overlap:g})")
    try:
        png = plot_pr(ev.curves, os.path.join(out_dir, "pr_curve.png"), target_precision)
        if not quiet:
            click.echo(f"wrote {png}")
    except ImportError:
        click.echo("note: matplotlib is not installed, so no pr_curve.png (pip install 'convnet[plot]')", err=True)
    return 0
