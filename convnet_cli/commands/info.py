"""`convnet info PATH`: what a batch folder, run directory, checkpoint or ONNX model holds."""
from __future__ import annotations

import json

import click


@click.command("info")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the same content instead of text.")
def command(path, as_json):
    """Show what PATH holds, reading no more of it than needed.

    \b
    batch folder    label names, cases per class and per batch, train/test ranges,
                    data shape and dtype, feature settings, skipped files
                    (labels only: the data arrays are never read)
    run directory   layer table (name, type, output shape, parameters), options,
    or checkpoint   epochs done, the best test, the checkpoints present
                    (weights are not read)
    ONNX model      inputs, outputs, metadata, opsets, operators (needs the export extra)

    \b
    convnet info BATCHES
    convnet info RUNS/ConvNet__2026-11-23_10.00.00
    convnet info RUNS/ConvNet__2026-11-23_10.00.00/best.npz --json
    convnet info model.onnx
    """
    from convnet_cli.info import describe, render
    from convnet_cli.info.text import plain

    info = describe(path, progress=not as_json)
    click.echo(json.dumps(info, indent=2, default=plain) if as_json else render(info))

