"""The flags of the commands that read audio the same way (make-batches, predict, detect): --channel and
--time-expansion (docs/COMMANDS.md, 'Channels and recorders')."""
from __future__ import annotations

import click


def reading_flags(channel_help: str, expansion_help: str):
    """A decorator adding --channel N|all|mix (default mix) and --time-expansion F (default 1) to a command,
    with each command's own help texts."""
    def add(fn):
        fn = click.option("--time-expansion", type=float, default=1.0, show_default=True, metavar="F",
                          help=expansion_help)(fn)
        return click.option("--channel", default="mix", show_default=True, metavar="N|all|mix",
                            help=channel_help)(fn)
    return add
