"""`convnet demo`: make synthetic upcall audio, make-batches, train, predict --report; print where it all went."""
from __future__ import annotations

import os
import time

import click

from convnet_cli.demo import config_path, make_upcall_dataset, train_demo


@click.command("demo")
@click.option("--dir", "root", default="convnet-demo", show_default=True, type=click.Path(),
              help="Folder for the demo's audio, runs and predictions.")
@click.option("--batches", "batch_dir", type=click.Path(),
              help="Where the demo writes its batch files.  [default: data_batches/upcall; data_batches/calls "
                   "with --recordings]")
@click.option("--clips", default=300, show_default=True, type=click.IntRange(min=20), help="Clips per class.")
@click.option("--epochs", type=click.IntRange(min=1), help="[default: 20; 15 with --recordings]")
@click.option("--device", default="cpu", show_default=True, help="cpu, gpu, gpu:N or auto.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--quiet", is_flag=True)
@click.option("--recordings", is_flag=True,
              help="The long-recording pipeline instead: annotated recordings -> make-batches --annotations -> "
                   "train -> detect -> evaluate (--clips is ignored; --epochs default 15).")
@click.option("--chorus", is_flag=True,
              help="Several species at once: a chorus of four call types that often overlap, trained and detected "
                   "multi-label, beside the same net trained single-label (--clips, --batches are ignored; --epochs "
                   "default 15).")
def command(root, batch_dir, clips, epochs, device, seed, quiet, recordings, chorus):
    """Run the whole pipeline on built-in synthetic right-whale upcall data."""
    if recordings and chorus:
        raise click.UsageError("give --recordings or --chorus, not both")
    if chorus:
        from convnet_cli.demo_chorus import main as chorus_demo

        return chorus_demo(os.path.join(root, "chorus"), epochs or 15, device, seed, quiet)
    if recordings:
        from convnet_cli.demo_recordings import main as recordings_demo

        return recordings_demo(root, batch_dir or os.path.join("data_batches", "calls"), epochs or 15, device, seed,
                               quiet)
    batch_dir = batch_dir or os.path.join("data_batches", "upcall")
    epochs = epochs or 20
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.make_batches import make_batches
    from convnet_cli.metrics import format_report
    from convnet_cli.predict.predict import predict_batches, write_csv, write_report
    from convnet_cli.train.checkpoint import resolve_checkpoint

    def say(msg):
        if not quiet:
            click.echo(msg, err=True)

    t0 = time.time()
    audio = os.path.join(root, "audio")
    say(f"1/4 synthetic upcalls: {clips} clips per class -> {audio}")
    make_upcall_dataset(audio, per_class=clips, seed=seed)

    import yaml

    with open(config_path("upcall-features.yaml"), encoding="utf-8") as f:
        features = FeatureSpec.from_dict(yaml.safe_load(f), "upcall-features.yaml")
    say(f"2/4 make-batches -> {batch_dir}")
    make_batches(audio, batch_dir, features=features, batch_size=100, test_fraction=0.2, seed=seed,
                 overwrite=True, progress=not quiet)

    runs = os.path.join(root, "runs")
    say(f"3/4 train -> {runs}")
    rc, run_dir = train_demo(batch_dir, runs, "upcall.yaml", epochs=epochs, device=device, seed=seed, quiet=quiet)
    if rc:
        return rc

    say("4/4 predict the test batches with the best checkpoint")
    ckpt = resolve_checkpoint(run_dir)
    preds = predict_batches(ckpt, batch_dir, device=device)
    csv_path = write_csv(preds, os.path.join(root, "predictions.csv"))
    report, report_path = write_report(preds, root, topk=1)
    click.echo(format_report(report))
    click.echo("")
    click.echo(f"audio:        {audio}")
    click.echo(f"batches:      {batch_dir}")
    click.echo(f"run:          {run_dir}")
    click.echo(f"checkpoint:   {ckpt}")
    click.echo(f"predictions:  {csv_path}")
    click.echo(f"report:       {report_path}")
    click.echo(f"test AUC {report.get('roc_auc', float('nan')):.4f}, accuracy {report['accuracy']:.4f}, "
               f"{time.time() - t0:.0f} s in all")
    click.echo(f"next: convnet show -f {run_dir} --cost --filters conv1")
    return 0
