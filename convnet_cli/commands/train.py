"""`convnet train`: a new run, or `-f RUN` to resume one."""
from __future__ import annotations

import dataclasses
import sys

import click

from convnet_cli.data.augment import AUGMENTATIONS, parse_augment
from convnet_cli.parallel import collective_errors
from convnet_cli.train.run_checks import MAX_EPOCHS
from convnet_cli.train.trainer import TrainOptions, parse_range, resume, start

# Flags default to None so a resume can tell the ones given from the run's own; the help shows the defaults
# of a new run, which TrainOptions holds.
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainOptions)}


def _default(name: str) -> str:
    return f"  [default: {_DEFAULTS[name]}]"



@click.command("train")
@click.option("-f", "resume_path", type=click.Path(), help="Resume from a run directory or checkpoint file.")
@click.option("--data-path", type=click.Path(), help="Batch folder made by 'convnet make-batches'.")
@click.option("--save-path", type=click.Path(),
              help="Folder that receives the run directory (a new run; a resume stays in its own run directory).")
@click.option("--layer-def", type=click.Path(), help="Layer definition (YAML, or a cuda-convnet .cfg).")
@click.option("--layer-params", type=click.Path(), help="Layer learning settings (YAML or .cfg).")
@click.option("--train-range", help="Training batches, e.g. 1-4 (default: from batches.meta).")
@click.option("--test-range", help="Test batches, e.g. 5 (default: from batches.meta).")
@click.option("--epochs", type=click.IntRange(min=1, max=MAX_EPOCHS),
              help=f"Total epochs (not extra ones), 1 to {MAX_EPOCHS:,}." + _default("epochs"))
@click.option("--mini", type=click.IntRange(min=1), help="Minibatch size." + _default("mini"))
@click.option("--test-freq", type=click.IntRange(min=1),
              help="Test and checkpoint every N training batches.  [default: each epoch]")
@click.option("--device", help="cpu, gpu, gpu:N or auto." + _default("device"))
@click.option("--seed", type=click.IntRange(min=0), help="Seed for initial weights, shuffling, augmentation, dropout." + _default("seed"))
@click.option("--max-checkpoints", type=click.IntRange(min=0),
              help="Keep the newest K numbered checkpoints plus best.npz; 0 keeps all." + _default("max_checkpoints"))
@click.option("--augment", help=f"Comma list of {', '.join(AUGMENTATIONS)}.")
@click.option("--early-stop", type=click.IntRange(min=1), help="Stop after N tests without improvement.")
@click.option("--best-by", type=click.Choice(("cost", "error", "auc", "map")),
              help="Which test makes best.npz (and counts for --early-stop): lowest test cost, lowest test error, "
                   "highest test ROC AUC (two classes), or highest test mean average precision over the classes "
                   "(multi-label batches).  [default: map on multi-label batches, else cost]")
@click.option("--balance/--no-balance", default=None,
              help="Draw minibatches so that every class is seen equally often (imbalanced data)."
                   + _default("balance"))
@click.option("--init-from", type=click.Path(), metavar="CHECKPOINT|RUN",
              help="Start from another run's weights: layers whose name and shapes match are copied, the rest "
                   "initialised (fine-tuning).")
@click.option("--quiet", is_flag=True, default=None, help="No progress bar or summary lines.")
def command(resume_path, **flags):
    """Train a network (or resume one with -f RUN).

    \b
    convnet train --data-path BATCHES --save-path RUNS --layer-def layers.yaml --layer-params params.yaml
    convnet train -f RUNS/ConvNet__2026-11-23_10.00.00 --epochs 20
    """
    explicit = {k: v for k, v in flags.items() if v is not None}
    if "train_range" in explicit:
        explicit["train_range"] = parse_range(explicit["train_range"], "--train-range")
    if "test_range" in explicit:
        explicit["test_range"] = parse_range(explicit["test_range"], "--test-range")
    if "augment" in explicit:
        explicit["augment"] = list(parse_augment(explicit["augment"]))
    with collective_errors():  # under mpiexec: an error on one rank ends them all
        if resume_path:
            rc = resume(resume_path, explicit)
        else:
            rc = start(TrainOptions(**explicit))
    if rc:
        sys.exit(rc)
