"""`train --init-from CHECKPOINT|RUN`: start a new run from another run's weights (fine-tuning).

Every layer of the new net whose name is in the checkpoint and whose arrays (weights, biases, running
statistics) all have the same shapes is copied; the rest keep their fresh initialisation. Updater state
(momentum, Adam moments) is not copied: the new run's optimiser starts from zero, as a fine-tuning run
with another learning rate should. To freeze a copied layer, give it `epsW: 0` and `epsB: 0` in the params
file. A run directory means its best.npz (else its newest checkpoint), as for `predict -f`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from convnet_cli.errors import ConfigError, DataError
from convnet_cli.train.checkpoint import load_checkpoint, resolve_checkpoint


@dataclass
class InitFromSummary:
    path: str
    copied: list = field(default_factory=list)    # layer names
    values: int = 0                               # numbers copied
    fresh: list = field(default_factory=list)     # (layer name, why it was initialised instead)

    def line(self) -> str:
        out = (f"init-from {self.path}: copied {len(self.copied)} layer{'s' if len(self.copied) != 1 else ''} "
               f"({', '.join(self.copied)}; {self.values:,} values)")
        if self.fresh:
            out += "; initialised " + ", ".join(f"{name} ({why})" for name, why in self.fresh)
        return out


def _shape(a):
    return tuple(int(s) for s in a.shape)


def init_from(net, path: str) -> InitFromSummary:
    """Copy the matching layers of the checkpoint at `path` (a file or a run directory) into `net`."""
    try:
        ckpt = load_checkpoint(resolve_checkpoint(path, prefer_best=True))
    except DataError as exc:
        raise ConfigError(f"--init-from: {exc}") from None
    saved = {}
    for key, a in ckpt.arrays.items():
        parts = key.split("/")
        if len(parts) == 2:  # <layer>/<param>; updater state (<layer>/<param>/<state>) stays behind
            saved.setdefault(parts[0], {})[parts[1]] = a
    summary = InitFromSummary(ckpt.path)
    host = {}
    for l in net.layers:
        mine = net.params.get(l.name) or {}
        if not mine:
            continue
        theirs = saved.get(l.name)
        if theirs is None:
            summary.fresh.append((l.name, "not in the checkpoint"))
            continue
        diff = [p for p in mine if p not in theirs or _shape(theirs[p]) != _shape(mine[p])]
        if diff:
            p = diff[0]
            there = f"{_shape(theirs[p])} there" if p in theirs else "absent there"
            summary.fresh.append((l.name, f"{p} {_shape(mine[p])} here, {there}"))
            continue
        for p in mine:
            host[f"{l.name}/{p}"] = theirs[p]
            summary.values += int(theirs[p].size)
        summary.copied.append(l.name)
    if not summary.copied:
        raise ConfigError(f"--init-from {path}: no layer of this net matches one of {ckpt.path} by name and shapes "
                          f"(it has {', '.join(sorted(saved)[:6]) or 'none'}); name the layers to copy as they "
                          "are named there")
    net.set_arrays(host, source=ckpt.path, strict=False)
    return summary
