"""`convnet continue RUN [flags]`: cuda-convnet's "continue a snapshot", word for word `convnet train -f RUN
[flags]`. The command is built from train's own options and runs train's own callback, so the two
spellings cannot drift apart: a flag added to train is a flag of continue."""
from __future__ import annotations

import click

from convnet_cli.commands import train as _train


def _continue(ctx, run, **flags):
    # ctx.invoke fills any train option not given here with its default, exactly as `train -f` would
    return ctx.invoke(_train.command, resume_path=run, **flags)


command = click.Command(
    "continue",
    callback=click.pass_context(_continue),
    params=[click.Argument(["run"], type=click.Path())]
    + [p for p in _train.command.params if p.name != "resume_path"],
    help="""Resume a run: the same as 'convnet train -f RUN [flags]'.

    RUN is a run directory (its newest checkpoint) or one checkpoint file. Only the flags given here override
    the run's saved options; --layer-def cannot change; the params file is re-read; the run stays in its own
    run directory (a --save-path elsewhere is refused: start a new run with --init-from RUN instead).

    \b
    convnet continue RUNS/ConvNet__2026-11-23_10.00.00 --epochs 20
    convnet continue RUNS/ConvNet__2026-11-23_10.00.00/3.4.npz --epochs 4
    """,
    short_help="Resume a run (the same as train -f RUN).",
    context_settings=_train.command.context_settings,
)
