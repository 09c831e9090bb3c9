"""`convnet convert-cfg LAYERS_CFG PARAMS_CFG OUT_DIR`: cuda-convnet INI configs -> this tool's YAML pair."""
from __future__ import annotations

import click

from convnet_cli.config.convert import convert_paths, write_conversion


@click.command(name="convert-cfg")
@click.argument("layers_cfg", type=click.Path(dir_okay=False))
@click.argument("params_cfg", type=click.Path(dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace YAML files already in OUT_DIR.")
def command(layers_cfg, params_cfg, out_dir, overwrite):
    """Convert cuda-convnet / cuda-convnet2 layers.cfg and layer-params.cfg to YAML.

    Writes OUT_DIR/<name>.yaml and OUT_DIR/<name>-params.yaml (<name> from LAYERS_CFG). Keys this tool
    has no use for (partialSum, gpu, ...) become '# not carried over' comments; an unknown layer type is
    an error. `convnet train` also reads .cfg files directly.
    """
    conv = convert_paths(layers_cfg, params_cfg)
    layers_yaml, params_yaml = write_conversion(conv, layers_cfg, out_dir, overwrite)
    click.echo(layers_yaml)
    click.echo(params_yaml)
    n = len(conv.not_carried)
    if n:
        click.echo(f"{n} key{'s' if n != 1 else ''} not carried over (see the '# not carried over' comments)",
                   err=True)
    else:
        click.echo("every key carried over", err=True)
