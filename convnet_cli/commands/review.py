"""`convnet review`: listen to and mark a sample of detections in a local web page (docs/REVIEW.md)."""
from __future__ import annotations

import os

import click

_SAMPLING = ("select", "per_class", "seed", "context", "classes")


@click.command("review")
@click.argument("detections", type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(),
              help="Folder for the sample (review.csv), its clips and images, and the verdicts.")
@click.option("--recordings", type=click.Path(),
              help="Folder holding the recordings.  [default: found through done.jsonl, Begin Path or Begin File]")
@click.option("--per-class", type=int, default=50, show_default=True, help="Detections to review per class (at most).")
@click.option("--select", type=click.Choice(["top", "random", "stratified"]), default="random", show_default=True,
              help="top: the highest scores; random: uniformly at random; stratified: spread evenly over "
                   "min(N, 10) equal-width score bins between the class's lowest and highest score.")
@click.option("--context", type=float, default=1.0, show_default=True,
              help="Seconds of audio on each side of the event in its clip (less at a recording's start or end).")
@click.option("--classes", help="Classes to review, comma-separated.  [default: every class detected]")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random and stratified draws.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port of the page on 127.0.0.1 (0: any free port).")
@click.option("--no-serve", is_flag=True,
              help="Write the files and a self-contained index.html (marks kept in the browser), then exit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(detections, out_dir, recordings, per_class, select, context, classes, seed, port, no_serve, quiet):
    """Listen to and mark (true / false / unsure) a sample of detections, per class, in a local web page.

    DETECTIONS: a detect OUT_DIR, its detections.csv, or Raven tables with Class and Score columns. Each
    verdict is saved at once to OUT/verdicts.csv and OUT/verdicts.selections.txt (which make-batches
    --annotations reads); running review again on OUT resumes and keeps its sample.

    \b
    convnet review detections/ --out review/
    convnet review detections/ --out review/ --select stratified --per-class 100 --classes upcall
    """
    from convnet_cli.review.build import prepare, write_index
    from convnet_cli.review.server import serve

    ctx = click.get_current_context()
    given = {k: ctx.params[k] for k in _SAMPLING
             if ctx.get_parameter_source(k) not in (click.core.ParameterSource.DEFAULT, None)}
    given["detections"] = detections

    def echo(msg):
        click.echo(msg, err=True)

    review = prepare(detections, out_dir, recordings=recordings, per_class=per_class, select=select, context=context,
                     classes=classes, seed=seed, given=given, progress=not quiet, echo=echo)
    click.echo(f"review: {len(review.items)} item(s) in {out_dir}{os.sep}review.csv; {review.progress_line()}")
    if no_serve:
        path = write_index(review)
        click.echo(f"wrote {path}: open it in a browser (no server: marks are kept in that browser; its buttons "
                   f"download verdicts.csv, to put into {out_dir} and run review again)")
        return 0
    try:
        serve(review, port, echo=click.echo)
    except KeyboardInterrupt:
        pass
    click.echo(f"stopped: {review.progress_line()}; verdicts in {os.path.join(out_dir, 'verdicts.csv')} and "
               f"{os.path.join(out_dir, 'verdicts.selections.txt')}")
    return 0


def write_calibrated(path, chosen: dict, notes, how: str):
    """What `evaluate --calibrate` ends with, from ANNOTATIONS or a review folder: thresholds.yaml (commented
    with how the thresholds were chosen, and the notes), the notes on stderr, and one line naming each class's
    threshold and the file."""
    from convnet_cli.thresholds import write_thresholds

    out = write_thresholds(path, chosen, how + "\n" + "\n".join(notes))
    for n in notes:
        click.echo(f"note: {n}", err=True)
    click.echo("thresholds: " + ", ".join(f"{c} {t:.4g}" for c, t in chosen.items()) + f" -> {out}")


def evaluate_review_dir(path, out_dir, classes, quiet, rule=None, calibrate_text=None):
    """`convnet evaluate REVIEW_DIR` (no ANNOTATIONS): the reviewed precision per class; evaluation.json (and
    with `--calibrate precision=P` thresholds.yaml) go into REVIEW_DIR unless --out is given."""
    import os

    from convnet_cli.review.evaluate import calibrate_review, evaluate_review, is_review_dir
    from convnet_cli.thresholds import THRESHOLDS_FILE

    if not is_review_dir(path):
        raise click.UsageError("Missing argument 'ANNOTATIONS' (without it, DETECTIONS must be a convnet review "
                               "folder, one holding verdicts.csv)")
    ctx = click.get_current_context()
    given = ctx.get_parameter_source("out_dir") not in (click.core.ParameterSource.DEFAULT, None)
    evaluate_review(path, out_dir if given else None, classes=classes, quiet=quiet, echo=click.echo)
    if rule is not None:
        chosen, notes = calibrate_review(path, rule[1], classes)
        write_calibrated(os.path.join(out_dir if given else path, THRESHOLDS_FILE), chosen, notes,
                         f"convnet evaluate --calibrate {calibrate_text}: per class the lowest reviewed score\n"
                         f"whose estimated precision (from the verdicts in {path}) reaches {rule[1]:g}")
    return 0
