"""The layer contract.

A layer type is one class in one module of this package, registered with `@register`. The class declares
its config keys (`keys`), how many inputs it takes, and which of its parameters are learned. The parser
(`convnet_cli.config.layer_def`) checks a layer's YAML against `keys` and hands the class a validated
`props` namespace; the class then infers its output shape (raising `self.error(...)` when the input does
not fit) and provides, cs231n style:

    init_params(rng)                     -> {name: host array}            (numpy, float32)
    forward(xs, params, ctx)             -> (out, cache)
    backward(dout, cache, params, ctx)   -> (dxs, grads)                  (dxs: one per input, or None)

and, for the tools outside the net, `param_shapes()` (the shapes init_params draws, for config/limits.py),
`to_onnx(g, xs, params)` (export) and `filter_bank(params)` (`show --filters`).

Besides `keys`, a class declares what the net and the parser need to know about it as class attributes
(`is_data`, `is_cost`, `weights_per_input`, `owns_neuron`, `skips_input_grads`, `fuses_with`, `fuses_neuron`,
`learned`, `hyper_defaults`); see `Layer`.

Shapes: a layer's output shape is given per case as (C, H, W), as in cuda-convnet. Activations are held
in NHWC layout, `x: (N, H, W, C)`, because im2col by strided views and the GEMM that follows want the
channels last (measured: see benchmarks/). Labels (a data layer with dataIdx 1) are `(N,)` int arrays,
shape (1, 1, 1). Layers compute in the dtype of their input (float32 in training, float64 in gradient
checks) and take `xp` from `ctx.xp`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np

from convnet_cli.data.targets import ClassTargets, kind_of
from convnet_cli.errors import ConfigError

REQUIRED = object()


@dataclass(frozen=True)
class Key:
    """One config key of a layer type.

    kind: 'int', 'float', 'pair' (int or [h, w] -> (h, w)), 'str', 'bool' (0/1/true/false),
          'floats' (number or list of numbers), 'int_or_all' (an int or the word 'all'), 'any'.
    """

    kind: str
    default: Any = REQUIRED
    choices: tuple = ()
    legacy: tuple = ()  # other spellings accepted for this key (cuda-convnet, convnet2)
    min: float | None = None
    doc: str = ""


@dataclass
class Context:
    """What a forward or backward pass may need besides its inputs."""

    xp: Any
    train: bool = False
    rng: Any = None  # device random generator (dropout masks)
    # training split over processes: sums a small float64 array over them (batchnorm statistics); else None
    allreduce: Any = None
    keep_cache: bool = True  # False: forward only (inference); a layer may skip what only backward needs
    # the run's record of which computation path each layer shape takes where several give different bits
    # (conv: im2col or Winograd, layers/winograd.py choose): {shape key: path}, kept in checkpoints; None:
    # choose by this machine's cache alone
    algos: dict | None = None
    extra: dict = field(default_factory=dict)


class Layer:
    type: ClassVar[str] = ""
    keys: ClassVar[dict] = {}
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1
    learned: ClassVar[tuple] = ()  # names of learned params; 'weights*' take epsW/momW/wc, the rest epsB/momB
    is_cost: ClassVar[bool] = False
    # What the net and the parser read from the class (never from the type name):
    is_data: ClassVar[bool] = False            # a data layer: no inputs, no gradient flows into it
    weights_per_input: ClassVar[bool] = False  # one weight array per input (fc): epsW/momW/wc lists per input
    owns_neuron: ClassVar[bool] = False        # takes the `neuron` key itself instead of the net applying it
    # True: the layer can skip its input gradient; the net sets `input_grads = False` on an instance whose
    # inputs are all data layers (backward then returns None for them).
    skips_input_grads: ClassVar[bool] = False
    input_grads: bool = True
    # A cost that can take over the layer of this class feeding its second input (when that layer has no
    # neuron): the net then calls forward_fused(labels, that layer's input, ctx) / backward_fused.
    fuses_with: ClassVar[type | None] = None
    neuron: Any = None  # set by the parser: the Neuron the net applies to this layer's output, or None
    # True: on the CPU the layer can apply a neuron that has `forward_inplace` (relu) to each chunk of its
    # output while the chunk is in the cache. The net then sets `chunk_neuron` on the instance and takes
    # the layer's output as the neuron's output (and as its backward cache) instead of applying it.
    fuses_neuron: ClassVar[bool] = False
    chunk_neuron: Any = None

    def neuron_on(self, out):
        """Apply `chunk_neuron` (if the net set one) to `out` (a chunk or all of the output), in place."""
        if self.chunk_neuron is not None:
            self.chunk_neuron.forward_inplace(out)
        return out
    # The layer-params keys this type reads at run time (coeff, keep, scale, ...) and their values when the
    # params file gives none; see `set_hyper`. The params parser accepts the keys of every registered type.
    hyper_defaults: ClassVar[dict] = {}

    def __init__(self, name: str, props: SimpleNamespace, in_shapes: list, in_names: list, source: str = ""):
        self.name = name
        self.props = props
        self.in_shapes = [tuple(s) for s in in_shapes]
        self.in_names = list(in_names)
        self.source = source  # file name for error messages, e.g. 'layers.yaml'
        # Run-time settings from the params file (coeff, keep, scale, pow, minDiv); refreshed on resume.
        self.out_shape = tuple(self.infer_shape())
        self.set_hyper({})

    # -- configuration ---------------------------------------------------------------------------
    def error(self, message: str) -> ConfigError:
        prefix = f"{self.source}: " if self.source else ""
        return ConfigError(f"{prefix}layer '{self.name}': {message}")

    def infer_shape(self) -> tuple:
        """(C, H, W) of the output per case; raise self.error(...) when the inputs do not fit."""
        return self.in_shapes[0]

    def input_problem(self, inputs) -> str | None:
        """What is wrong with the layers feeding this one (`inputs`, built layers in in_names order, their
        neurons set) beyond their shapes, as the fix to say in one line; None when nothing is."""
        return None

    def set_hyper(self, values: dict):
        """Take this layer's run-time settings from the (re-)read params file (defaults where absent)."""
        merged = dict(self.hyper_defaults)
        merged.update({k: v for k, v in values.items() if v is not None})
        self.check_hyper(merged)
        self.hyper = SimpleNamespace(**merged)

    def check_hyper(self, hyper: dict):
        """Convert and check run-time settings in place; raise self.error(...) for a value out of range."""

    # -- compute -----------------------------------------------------------------------------------
    def init_params(self, rng) -> dict:
        """rng: numpy.random.Generator (host). Returns {name: float32 numpy array}."""
        return {}

    def param_shapes(self) -> dict:
        """{name: shape tuple} of the arrays `init_params` draws, from the props and shapes alone (nothing
        is allocated): what config/limits.py sizes before a weight exists."""
        return {}

    def forward(self, xs: list, params: dict, ctx: Context):
        raise NotImplementedError

    def backward(self, dout, cache, params: dict, ctx: Context):
        raise NotImplementedError

    # -- what the tools outside the net read from a layer ------------------------------------------------
    @classmethod
    def provides(cls, method: str) -> bool:
        """True when the class overrides Layer's `method` ('to_onnx', 'filter_bank'): the types that
        export and `show --filters` take."""
        return getattr(cls, method) is not getattr(Layer, method)

    def to_onnx(self, g, xs: list, params: dict) -> str:
        """Add the layer's test-time pass to an ONNX graph; returns the name of its output tensor.

        g: the graph builder of convnet_cli/export/onnx.py (op, const, ints, reshape, transpose, slice,
        scale, window_sum); xs: the names of the input tensors, NCHW (the net's NHWC math restated);
        params: {name: float32 numpy array}. The net's `neuron` on the output is not included (export
        adds it). A type that does not override this is refused with a one-line error."""
        raise self.not_exportable()

    def not_exportable(self, supported=None) -> ConfigError:
        """The error for a layer whose type has no ONNX translation. supported: the type names export
        takes; by default the registered types whose class overrides `to_onnx`."""
        if supported is None:
            supported = sorted(t for t, c in LAYER_CLASSES.items() if c.provides("to_onnx"))
        return self.error(f"type '{self.type}' cannot be exported to ONNX (no ONNX operator reproduces it); "
                          f"export supports {', '.join(supported)}")

    def filter_bank(self, params: dict):
        """What `convnet show --filters` draws: (weights (F, C, fh, fw), description) from the layer's
        params ({name: float32 numpy array}, as in its checkpoint), or None when it has no filters."""
        return None

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r} {self.in_shapes} -> {self.out_shape}>"


class PerInputWeights:
    """Mixin for a layer with one weight array per input (fc; conv/local with several inputs): `weights`
    for one input, `weights.0`, `weights.1`, ... for several, and one `biases`."""

    weights_per_input: ClassVar[bool] = True

    @property
    def weight_names(self):
        n = len(self.in_shapes)
        return ["weights"] if n == 1 else [f"weights.{i}" for i in range(n)]

    @property
    def learned(self):
        return tuple(self.weight_names) + ("biases",)


class CostLayer(Layer):
    """A cost: forward returns ((cost, metrics), cache) where cost is the mean over the minibatch
    (unweighted by coeff) and metrics maps names ('logprob', 'error', 'topk_error') to floats.
    backward(coeff, cache, params, ctx) gets the weight of this cost in place of dout.

    Its role, which the trainer, predict, best-by, show and export read from the class (never from its type
    name): `scores_input`, the index of the input that holds the class scores (the net's output for
    predict, detect and export; None for a cost without class scores, such as a sum of squares),
    `needs_labels`, `reports_error` (its metrics hold a classification error), `trains_on` (the kinds of
    target it can train towards, data/targets.py), `fuses_neuron_name`, and `check_data`, which refuses data
    it cannot train on."""

    is_cost = True
    hyper_defaults = {"coeff": 1.0}
    max_inputs = 2
    min_inputs = 2
    scores_input: ClassVar[int | None] = None
    needs_labels: ClassVar[bool] = True
    reports_error: ClassVar[bool] = False
    trains_on: ClassVar[tuple] = (ClassTargets,)
    # The name of a neuron (`logistic`) this cost can take over when the layer feeding its scores applies it
    # and feeds nothing else: the net then also passes that neuron's input (the logits) to
    # forward_logits(labels, logits, outputs, ctx) and takes backward_logits(coeff, cache, ctx) as the
    # gradient with respect to them, skipping the neuron's own backward.
    fuses_neuron_name: ClassVar[str | None] = None

    @property
    def is_classifier(self) -> bool:
        """A cost on class scores: predict, detect and export take its scores input as the net's output."""
        return self.scores_input is not None

    @property
    def num_scores(self) -> int:
        """Class scores per case (the C of the scores input's (C, 1, 1) shape)."""
        return int(self.in_shapes[self.scores_input][0])

    def class_probabilities(self, scores, num_classes: int, xp):
        """The (n, num_classes) class probabilities that predict, detect and export give for this cost's
        scores input, `scores` (n, num_scores): the scores themselves unless the cost reads them otherwise."""
        return scores

    def class_probabilities_onnx(self, g, y: str, num_classes: int) -> str:
        """class_probabilities in an ONNX graph (export/onnx.py's builder `g`, the scores tensor `y`)."""
        return y

    def check_data(self, label_names, kind, source: str = "") -> None:
        """ConfigError (one line naming the layer, with the fix) when this cost cannot train on batches with
        these classes and this kind of target (data/targets.py: a Targets class, or a bool for multi-label)."""
        kind = kind_of(kind)
        if self.needs_labels and kind not in self.trains_on:
            raise self.error(f"the batches are {kind.name} ({kind.describe}), which a {self.type} cost cannot "
                             f"train on; {kind.cost_fix(label_names)}")

    def infer_shape(self):
        return (1, 1, 1)


LAYER_CLASSES: dict = {}
LAYER_ALIASES: dict = {}


def register(cls=None, *, aliases: tuple = ()):
    """Class decorator: make a layer class available under its `type` (and legacy aliases)."""

    def wrap(c):
        if not c.type:
            raise TypeError(f"{c.__name__} has no type name")
        LAYER_CLASSES[c.type] = c
        for a in aliases:
            LAYER_ALIASES[a] = c.type
        return c

    return wrap(cls) if cls is not None else wrap


# -- shape helpers shared by conv, local and pool ---------------------------------------------------
def conv_out_size(size: int, filt: int, pad: int, stride: int) -> int:
    return (size + 2 * pad - filt) // stride + 1


def fmt_hw(shape) -> str:
    """'HxW' of a (C, H, W) shape, as error messages print it."""
    return f"{shape[1]}x{shape[2]}"


_ONES = {}


def column_sums(a2, xp):
    """The sums of the columns of a 2-D (M, K) array, as one GEMV: ones(M) @ a2 -> (K,).

    On CuPy this is what per-channel sums over an NHWC map (batch-norm statistics, conv bias gradients) must
    be: `a2.sum(axis=0)` spreads its reduction over only K thread blocks, 16 ms instead of about 0.1 for a
    (384000, 16) map on an H200. On NumPy the GEMV is also the fast way (BLAS, blocked sums)."""
    m = a2.shape[0]
    device = xp.cuda.get_device_id() if xp is not np else None
    key = (m, a2.dtype.str, device)
    ones = _ONES.get(key)
    if ones is None:
        if len(_ONES) > 32:
            _ONES.clear()
        ones = _ONES[key] = xp.ones(m, dtype=a2.dtype)
    return ones @ a2

