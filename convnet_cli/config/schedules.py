"""Learning-rate schedules in cuda-convnet2's syntax, as functions of training progress.

progress p = batches done / total batches (0 at the start, 1 at the end); `epoch` is p * epochs.

    0.01                                   constant
    const[base=b]                          b
    linear[base=b;tgtFactor=f]             b at p=0 falling linearly to b/f at p=1
    exp[base=b;tgtFactor=f]                b * f**(-p): b at p=0, b/f at p=1
    dexp[base=b;tgtFactor=f;numSteps=k]    exp in k discrete steps: b * f**(-floor(p*k)/(k-1))
    step[base=b;factor=f;epochs=e1,e2]     b * f**(number of e_i <= epoch)
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

_FORM = re.compile(r"^\s*([A-Za-z]+)\s*\[(.*)\]\s*$")
_ARGS = {
    "const": ("base",),
    "linear": ("base", "tgtFactor"),
    "exp": ("base", "tgtFactor"),
    "dexp": ("base", "tgtFactor", "numSteps"),
    "step": ("base", "factor", "epochs"),
}


@dataclass(frozen=True)
class Schedule:
    kind: str
    base: float
    tgtFactor: float = 1.0
    numSteps: int = 1
    factor: float = 1.0
    epochs: tuple = ()
    text: str = ""

    def __call__(self, progress: float = 0.0, epoch: float = 0.0) -> float:
        p = min(max(progress, 0.0), 1.0)
        if self.kind == "const":
            return self.base
        if self.kind == "linear":
            return self.base * ((1 - p) + p / self.tgtFactor)
        if self.kind == "exp":
            return self.base * self.tgtFactor ** (-p)
        if self.kind == "dexp":
            k = self.numSteps
            step = min(k - 1, int(math.floor(p * k)))
            return self.base * self.tgtFactor ** (-step / max(k - 1, 1))
        if self.kind == "step":
            passed = sum(1 for e in self.epochs if epoch + 1e-9 >= e)
            return self.base * self.factor ** passed
        raise AssertionError(self.kind)

    def __str__(self):
        return self.text or f"{self.base:g}"


def parse_schedule(value) -> Schedule:
    """A number or schedule string -> Schedule; ValueError with a one-line reason."""
    if isinstance(value, bool):
        raise ValueError("must be a number or a schedule like exp[base=0.01;tgtFactor=10]")
    if isinstance(value, (int, float)):
        return Schedule("const", float(value), text=f"{float(value):g}")
    text = str(value).strip()
    try:
        return Schedule("const", float(text), text=text)
    except ValueError:
        pass
    m = _FORM.match(text)
    if not m or m.group(1) not in _ARGS:
        kinds = ", ".join(f"{k}[{';'.join(a + '=...' for a in v)}]" for k, v in _ARGS.items())
        raise ValueError(f"schedule '{text}' is not a number or one of {kinds}")
    kind = m.group(1)
    args = {}
    for part in filter(None, (p.strip() for p in m.group(2).split(";"))):
        if "=" not in part:
            raise ValueError(f"schedule '{text}': '{part}' should be name=value")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in _ARGS[kind]:
            raise ValueError(f"schedule '{text}': {kind} takes {', '.join(_ARGS[kind])}, not '{k}'")
        args[k] = v
    missing = [a for a in _ARGS[kind] if a not in args]
    if missing:
        raise ValueError(f"schedule '{text}': missing {', '.join(missing)}")
    try:
        base = float(args["base"])
        out = {"kind": kind, "base": base, "text": text}
        if "tgtFactor" in args:
            out["tgtFactor"] = float(args["tgtFactor"])
            if out["tgtFactor"] <= 0:
                raise ValueError
        if "numSteps" in args:
            out["numSteps"] = int(args["numSteps"])
            if out["numSteps"] < 1:
                raise ValueError
        if "factor" in args:
            out["factor"] = float(args["factor"])
        if "epochs" in args:
            out["epochs"] = tuple(float(e) for e in args["epochs"].split(",") if e.strip())
    except ValueError:
        raise ValueError(f"schedule '{text}': its values must be positive numbers") from None
    return Schedule(**out)
