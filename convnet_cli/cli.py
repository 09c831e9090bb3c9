"""The `convnet` command line: parse flags, call the pipeline, turn user errors into exit code 2.

Each command lives in convnet_cli/commands/<name>.py as a click command called `command`.
"""
from __future__ import annotations

import importlib
import keyword
import sys
import traceback
import warnings

import click

from convnet_cli import __version__
from convnet_cli.errors import ConvnetError

# Module names; a command whose name is a Python keyword lives in `<name>_.py` (continue_).
COMMANDS = ("make_batches", "train", "continue_", "predict", "detect", "evaluate", "show", "info", "convert_cfg",
            "demo", "export", "review")


def _module_name(command: str) -> str:
    mod_name = command.replace("-", "_")
    return mod_name + "_" if keyword.iskeyword(mod_name) else mod_name


class _Group(click.Group):
    def list_commands(self, ctx):
        return [c.rstrip("_").replace("_", "-") for c in COMMANDS]

    def get_command(self, ctx, name):
        mod_name = _module_name(name)
        if mod_name not in COMMANDS or name.endswith("_"):
            return None
        try:
            mod = importlib.import_module(f"convnet_cli.commands.{mod_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"convnet_cli.commands.{mod_name}":
                return None
            raise
        return mod.command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="convnet")
@click.option("--debug", is_flag=True, help="Show a Python traceback for errors.")
@click.pass_context
def cli(ctx, debug):
    """Train conv and recurrent nets on audio spectrograms from YAML configs (cuda-convnet style)."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _debug_requested(argv) -> bool:
    return "--debug" in argv


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    if debug:
        argv = [a for a in argv if a != "--debug"]
        argv = ["--debug"] + argv
    else:
        # NumPy's floating-point warnings (overflow, invalid value) are no message for a user: every number
        # that reaches a file or decides a step is checked, and a non-finite one is a one-line error naming
        # where it came from (train's costs, predict's, detect's and export's probabilities)
        warnings.filterwarnings("ignore", category=RuntimeWarning,
                                message=r"(overflow|invalid value|divide by zero|underflow) encountered")
    try:
        rv = cli.main(args=argv, prog_name="convnet", standalone_mode=False)
    except ConvnetError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"convnet: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("convnet: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        # one line, like every other user error: what is wrong and where to look
        cmd = exc.ctx.command_path if exc.ctx is not None else "convnet"
        click.echo(f"{cmd}: error: {exc.format_message()} (see '{cmd} --help')", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"convnet: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("convnet: interrupted", err=True)
        sys.exit(130)
    except MemoryError:
        if debug:
            traceback.print_exc()
        click.echo("convnet: error: out of memory; use a smaller --mini, --batch or --batch-size", err=True)
        sys.exit(1)
    except OSError as exc:
        if debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        click.echo(f"convnet: error: {where}{exc.strerror or exc}", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
