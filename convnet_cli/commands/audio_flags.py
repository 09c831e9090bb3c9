"""The flags of the commands that read audio the same way (make-batches, predict, detect): --channel and
--time-expansion (docs/COMMANDS.md, 'Channels and recorders'); and `options_of`, which hands a command's flags
to the option object of its pipeline by name, so that a new flag is its click option and its field."""
from __future__ import annotations

import dataclasses

import click


def options_of(cls, flags: dict, **values):
    """An instance of the dataclass `cls` (DetectOptions, ClipOptions, ...) from a command's `flags` (click's
    keyword arguments): every field named like a flag takes its value, a flag not given (None) keeps the
    field's default; `values` set the others (or override)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in flags.items() if k in names and v is not None}
    kw.update(values)
    return cls(**kw)


def reading_flags(channel_help: str, expansion_help: str):
    """A decorator adding --channel N|all|mix (default mix) and --time-expansion F (default 1) to a command,
    with each command's own help texts."""
    def add(fn):
        fn = click.option("--time-expansion", type=float, default=1.0, show_default=True, metavar="F",
                          help=expansion_help)(fn)
        return click.option("--channel", default="mix", show_default=True, metavar="N|all|mix",
                            help=channel_help)(fn)
    return add
