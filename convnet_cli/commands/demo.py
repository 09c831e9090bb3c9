"""`convnet demo`: make synthetic upcall audio, make-batches, train, predict --report; print where it all went."""
from __future__ import annotations

import os

import click


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
    from convnet_cli.demo import main as upcall_demo

    return upcall_demo(root, batch_dir or os.path.join("data_batches", "upcall"), clips, epochs or 20, device, seed,
                       quiet)
