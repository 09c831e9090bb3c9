"""A network: the layers of a layer definition as a DAG in file order, with forward, backward and update.

The Python API a notebook user calls:

    net = Net.from_files("layers.yaml", "params.yaml", data_shape=(1, 64, 101))
    costs = net.forward({0: x, 1: y}, train=True)   # x: (N, H, W, C) float32, y: (N,) int
    grads = net.backward()
    net.update(grads, progress=0.1, epoch=0.5)
    probs = net.forward({0: x}, train=False); net.outputs["probs"]
    arrays = net.get_arrays(); net.set_arrays(arrays)

Arrays are on the net's backend (numpy or cupy); `get_arrays` returns host copies named as in
checkpoints: `<layer>/<param>` and `<layer>/<param>/<state>`.
"""
from __future__ import annotations

import math

import numpy as np

from convnet_cli.backend import CPU, Backend, to_host
from convnet_cli.config.layer_def import build_layers
from convnet_cli.config.loader import parse_layer_def_text, parse_layer_params_text
from convnet_cli.config.yamlio import display_name, read_text
from convnet_cli.errors import ConfigError, DataError, did_you_mean
from convnet_cli.layers.base import Context
from convnet_cli.updaters import update_layer


class Net:
    def __init__(self, layers: list, learn: dict, backend: Backend = CPU):
        self.layers = layers
        self.by_name = {l.name: l for l in layers}
        self.backend = backend
        self.xp = backend.xp
        self.params = {l.name: {} for l in layers}
        self.states = {l.name: {} for l in layers}  # updater state: layer -> param -> {name: array}
        self.consumers = {l.name: [] for l in layers}
        for l in layers:
            for i in l.in_names:
                self.consumers[i].append(l.name)
        self.data_layers = [l for l in layers if l.is_data]
        self.cost_layers = [l for l in layers if l.is_cost]
        # A layer that reads only data layers owes no input gradient (backward drops it); conv skips it.
        for l in layers:
            if l.in_names and l.skips_input_grads:
                l.input_grads = not all(self.by_name[i].is_data for i in l.in_names)
        # On the CPU a relu (a neuron with forward_inplace) is applied by a layer that can do so on each chunk
        # of its output while the chunk is in the cache (conv, batchnorm, pool): one pass over memory less.
        for l in layers:
            fusable = l.fuses_neuron and l.neuron is not None and l.neuron.forward_inplace is not None
            l.chunk_neuron = l.neuron if fusable and backend.xp.__name__ == "numpy" else None
        # A cost that fuses with the layer feeding it (cost.logreg on a softmax without a neuron): the cost
        # computes that layer's output and its gradient together.
        self.fused = {}
        for l in self.cost_layers:
            if l.fuses_with:
                src = self.by_name[l.in_names[1]]
                if isinstance(src, l.fuses_with) and src.neuron is None:
                    self.fused[l.name] = src.name
        # A cost that takes over the neuron of the layer feeding its scores (cost.bce on an fc with neuron:
        # logistic, when nothing else reads that fc): the cost reads the logits too and returns their gradient.
        self.fused_neuron = {}
        for l in self.cost_layers:
            name = l.fuses_neuron_name
            if name and l.scores_input is not None:
                src = self.by_name[l.in_names[l.scores_input]]
                if (src.neuron is not None and getattr(src.neuron, "name", None) == name and src.chunk_neuron is None
                        and not src.is_data and self.consumers[src.name] == [l.name]):
                    self.fused_neuron[l.name] = src.name
        self._logit_layers = set(self.fused_neuron.values())
        self.set_learning(learn)
        self.outputs = {}
        self._costs = {}  # the last forward's, for backward (see _costs_finite)
        self._caches = {}
        self._ncaches = {}
        self._ctx = None
        # The computation path each conv shape took (layers/winograd.py choose), recorded as the net first
        # meets it and saved in checkpoints: a resumed run takes the same paths, so the same bits, anywhere.
        self.algos = {}

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def from_text(cls, layer_def_text: str, params_text: str | None, data_shape, backend: Backend = CPU,
                  seed: int = 0, layer_def_path: str = "layers.yaml", params_path: str = "params.yaml",
                  check=None):
        """A net with weights drawn from `seed`. check(layers): called on the built layers before the net
        is made (to raise a ConfigError about them)."""
        specs = parse_layer_def_text(layer_def_text, layer_def_path)
        layers = build_layers(specs, tuple(data_shape), display_name(layer_def_path))
        learn = parse_params(params_text or "", params_path or "params.yaml", layers)
        if check is not None:
            check(layers)
        net = cls(layers, learn, backend)
        net.init_params(seed)
        return net

    @classmethod
    def from_checkpoint(cls, ckpt, backend: Backend = CPU, *, params_text: str | None = None,
                        params_path: str | None = None, data_shape=None, seed: int = 0, check=None,
                        load_arrays: bool = True):
        """The net a checkpoint (train/checkpoint.py's Checkpoint) was saved from, with its arrays loaded.

        params_text/params_path: a layer-params file to use instead of the copy in the checkpoint (a resume
        re-reads it); data_shape: the (C, H, W) of the data now (default: the saved one); seed: only
        gives the arrays their shapes before the checkpoint's values replace them; check: as in from_text;
        load_arrays=False: only the structure (layers, shapes), for a caller that reads ckpt.arrays itself.
        """
        st = ckpt.state
        if params_text is None:
            params_text, params_path = st.get("layer_params", ""), st.get("layer_params_name", "params.yaml")
        net = cls.from_text(st["layer_def"], params_text, data_shape or st["data_shape"], backend, seed,
                            st.get("layer_def_name", "layers.yaml"), params_path, check)
        if load_arrays:
            net.set_arrays(ckpt.arrays, source=ckpt.path)
        recorded = st.get("conv_algos")
        if isinstance(recorded, dict):
            net.algos = {str(k): str(v) for k, v in recorded.items()}
        return net

    @classmethod
    def from_files(cls, layer_def: str, layer_params: str | None, data_shape, backend: Backend = CPU,
                   seed: int = 0):
        params_text = read_text(layer_params, "layer params") if layer_params else ""
        return cls.from_text(read_text(layer_def, "layer definition"), params_text, data_shape, backend, seed,
                             layer_def, layer_params or "params.yaml")

    def set_learning(self, learn: dict):
        """Install (re-read) params-file settings: learning rates, updaters and run-time layer settings."""
        self.learn = learn
        for l in self.layers:
            spec = learn[l.name]
            l.set_hyper({k: spec.hyper[k] for k in l.hyper_defaults if k in spec.hyper})

    def init_params(self, seed: int = 0):
        """Draw initial weights on the host from `seed` (identical on CPU and GPU), then move them."""
        rng = np.random.default_rng(seed)
        for l in self.layers:
            self.params[l.name] = {k: self.backend.asarray(v) for k, v in l.init_params(rng).items()}
            self.states[l.name] = {}

    # -- roles -----------------------------------------------------------------------------------------
    @property
    def classifier(self):
        """The first cost layer on class scores (layers/base.py CostLayer.is_classifier), or None."""
        return next((l for l in self.cost_layers if l.is_classifier), None)

    def scores_cost(self, layer: str):
        """The classifier cost when `layer` is its scores input (its class_probabilities then give one
        probability per class: predict, detect, export), else None."""
        cost = self.classifier
        return cost if cost is not None and layer == cost.in_names[cost.scores_input] else None

    def output_layer(self, layer: str | None = None) -> str:
        """The layer whose output is the class scores: `layer` when given, else the scores input of the
        classifier cost (what predict, detect, export and the test AUC read)."""
        if layer:
            if layer not in self.by_name:
                raise ConfigError(f"layer '{layer}' is not in the network{did_you_mean(layer, self.by_name)}")
            return layer
        cost = self.classifier
        if cost is None:
            raise ConfigError("the network has no classification cost (cost.logreg or cost.bce); name the output "
                              "layer to predict with")
        return cost.in_names[cost.scores_input]

    def check_data(self, label_names, kind=False, *, multi_label=None):
        """ConfigError when a cost of the net cannot train on batches with these classes and this kind of
        target (data/targets.py; a bool: multi-label; `multi_label=`, the older keyword, says the same)
        (one line, the fix)."""
        if multi_label is not None:
            kind = multi_label
        for l in self.cost_layers:
            l.check_data(list(label_names), kind)

    # -- compute ---------------------------------------------------------------------------------------
    def forward(self, data: dict, train: bool = False, rng=None, check_finite: bool = False,
                keep_cache: bool = True, keep=(), allreduce=None) -> dict:
        """data: {dataIdx: array}; index 0 features (N, H, W, C), 1 labels (N,) or (N, K).

        Returns {cost layer: (cost, metrics)}; cost layers are skipped when labels are not given.
        Every layer's output stays in `self.outputs` until the next call, or until backward has run past
        it (backward keeps them all when a cost is not finite, for first_nonfinite).

        keep_cache=False is the inference path (predict): nothing is kept for a backward pass, and a
        layer's output is dropped as soon as its last consumer has run, except the outputs of layers
        that nothing consumes and of the layers named in `keep`; so only a few activations are alive at
        a time.

        allreduce: in a data-parallel step (train/data_parallel.py), the sum over the processes that layers
        reducing over the minibatch (batchnorm's statistics) apply to their per-process sums."""
        xp = self.xp
        # the last pass's activations and caches go now, not when this pass ends: else both passes' would be
        # alive at once (twice a step's memory at the peak)
        self.outputs, self._caches, self._ncaches = {}, None, None
        ctx = Context(xp=xp, train=train, rng=rng, allreduce=allreduce if train else None, keep_cache=keep_cache,
                      algos=self.algos)
        self._ctx = ctx
        outs, caches, ncaches = {}, {}, {}
        logits = {}  # the neuron inputs of the layers in self._logit_layers (see fused_neuron)
        costs = {}
        have_labels = 1 in data and data[1] is not None
        drop_after = None if keep_cache else self._last_readers(keep)
        for index, l in enumerate(self.layers):
            if drop_after is not None:  # the previous layer has run: forget what only it still needed
                self._release(drop_after.get(index - 1, ()), outs, caches, ncaches)
            if l.is_data:
                if l.props.dataIdx not in data:
                    outs[l.name] = None
                    continue
                outs[l.name] = data[l.props.dataIdx]
                continue
            if l.is_cost:
                if not have_labels and l.needs_labels:
                    continue
                if l.name in self.fused:
                    sm = self.by_name[self.fused[l.name]]
                    val, caches[l.name] = l.forward_fused(outs[l.in_names[0]], outs[sm.in_names[0]], ctx)
                elif l.name in self.fused_neuron and self.fused_neuron[l.name] in logits:
                    src = self.fused_neuron[l.name]
                    val, caches[l.name] = l.forward_logits(outs[l.in_names[0]], logits[src], outs[src], ctx)
                    caches[("logits", src)] = True
                else:
                    val, caches[l.name] = l.forward([outs[i] for i in l.in_names], self.params[l.name], ctx)
                costs[l.name] = val
                continue
            xs = [outs[i] for i in l.in_names]
            out, caches[l.name] = l.forward(xs, self.params[l.name], ctx)
            if l.chunk_neuron is not None:  # the layer applied it; its output is the neuron's cache
                ncaches[l.name] = out
            elif l.neuron is not None:
                if l.name in self._logit_layers and have_labels:
                    logits[l.name] = out
                out, ncaches[l.name] = l.neuron.forward(out, xp)
            outs[l.name] = out
        if drop_after is not None:
            self._release(drop_after.get(len(self.layers) - 1, ()), outs, caches, ncaches)
            caches, ncaches = None, None
        self.outputs, self._caches, self._ncaches = outs, caches, ncaches
        self._costs = costs
        return costs

    def _costs_finite(self) -> bool:
        """Whether every cost of the last forward is finite (a host number each: one sync on a GPU)."""
        return all(math.isfinite(float(c)) for c, _ in self._costs.values())

    def _read_by_costs(self) -> set:
        """Names of the outputs that cost layers read (with a fused softmax + logreg, the softmax's input)."""
        names = {i for l in self.cost_layers for i in l.in_names}
        return names | {i for sm in self.fused.values() for i in self.by_name[sm].in_names}

    def _last_readers(self, keep) -> dict:
        """{layer index: names of the outputs that this layer is the last to read}, leaving out the
        outputs in `keep`, those that cost layers read (a caller may want them without labels; with a
        fused softmax + logreg, the softmax's input too) and those that nothing reads (the net's outputs)."""
        never = set(keep) | self._read_by_costs()
        last = {}
        for index, l in enumerate(self.layers):
            for name in l.in_names:
                last[name] = index
        drop = {}
        for name, index in last.items():
            if name not in never:
                drop.setdefault(index, []).append(name)
        return drop

    @staticmethod
    def _release(names, outs, caches, ncaches):
        caches.clear()
        ncaches.clear()
        for name in names:
            outs[name] = None

    def first_nonfinite(self) -> str | None:
        """Name of the first layer (in order) whose last output holds NaN or inf."""
        xp = self.xp
        for l in self.layers:
            out = self.outputs.get(l.name)
            if out is not None and not l.is_data and not l.is_cost and not bool(xp.isfinite(out).all()):
                return l.name
        return None

    def backward(self, grad_scale: float = 1.0) -> dict:
        """Gradients of sum(coeff * cost) for the last forward: {layer: {param: array}}.

        grad_scale: the share of the minibatch's cost gradient this process owes (its cases over the
        minibatch's, in a data-parallel step; 1 in one process)."""
        ctx = self._ctx
        if self._caches is None:
            raise RuntimeError("Net.backward needs a forward(keep_cache=True) before each call: the last forward "
                               "pass kept nothing for backward (keep_cache=False), or a backward used it up")
        # Each layer's cache is dropped once its backward has run, and its output once its neuron's backward
        # has (every reader of it is above it and has run), so that memory serves the gradients of the
        # layers below. When a cost of the last forward is not finite the outputs stay, for first_nonfinite.
        caches, ncaches = self._caches, self._ncaches
        self._caches = self._ncaches = None
        outs = self.outputs if self._costs_finite() else {}
        read_by_costs = self._read_by_costs()   # small, and what a caller reads after a step: they stay
        douts = {}
        dlogits = {}  # gradients with respect to the logits of a layer whose neuron a cost took over
        grads = {}

        def add(name, d):
            if d is None:
                return
            douts[name] = d if name not in douts else douts[name] + d

        for l in reversed(self.layers):
            if l.is_data:
                continue
            if l.is_cost:
                if l.name not in caches:
                    continue
                coeff = l.hyper.coeff * grad_scale
                if l.name in self.fused:
                    sm = self.by_name[self.fused[l.name]]
                    add(sm.in_names[0], l.backward_fused(coeff, caches.pop(l.name), ctx))
                    continue
                src = self.fused_neuron.get(l.name)
                if src is not None and ("logits", src) in caches:
                    dlogits[src] = l.backward_logits(coeff, caches.pop(l.name), ctx)
                    continue
                dxs, _ = l.backward(coeff, caches.pop(l.name), self.params[l.name], ctx)
                for name, d in zip(l.in_names, dxs):
                    add(name, d)
                continue
            dout = douts.pop(l.name, None)
            cache, ncache = caches.pop(l.name, None), ncaches.pop(l.name, None)
            if l.name in dlogits:  # the cost gave the gradient past the neuron (nothing else reads this layer)
                dout = dlogits.pop(l.name)
            elif dout is None:
                continue
            elif l.neuron is not None:
                dout = l.neuron.backward(dout, ncache, self.xp)
            ncache = None
            if l.name in outs and l.name not in read_by_costs:
                outs[l.name] = None
            dxs, g = l.backward(dout, cache, self.params[l.name], ctx)
            del cache, ncache
            if g:
                grads[l.name] = g
            for name, d in zip(l.in_names, dxs):
                if not self.by_name[name].is_data:
                    add(name, d)
        return grads

    def update(self, grads: dict, progress: float = 0.0, epoch: float = 0.0) -> dict:
        """Apply the updaters; returns {layer: epsW used now} for the log."""
        rates = {}
        for name, g in grads.items():
            layer = self.by_name[name]
            learned = {k: v for k, v in g.items() if k in layer.learned}
            r = update_layer(self.params[name], learned, self.states[name], self.learn[name], progress, epoch)
            w = [v for k, v in r.items() if k.startswith("weight") or k == "gamma"]
            rates[name] = w[0] if w else next(iter(r.values()), None)
        return rates

    # -- parameters ------------------------------------------------------------------------------------
    def get_arrays(self) -> dict:
        """Host copies of every parameter, running statistic and updater state, named for checkpoints."""
        # Copies, also on the CPU (where to_host returns the live array): updates change params in place,
        # and a snapshot (the best model so far, a checkpoint being written) must not change with them.
        def copy(a):
            return a.copy() if isinstance(a, np.ndarray) else to_host(a)

        out = {}
        for lname, ps in self.params.items():
            for pname, a in ps.items():
                out[f"{lname}/{pname}"] = copy(a)
            for pname, st in self.states[lname].items():
                for sname, a in st.items():
                    out[f"{lname}/{pname}/{sname}"] = copy(a)
        return out

    def set_arrays(self, arrays: dict, source: str = "checkpoint", strict: bool = True):
        """Load arrays named `<layer>/<param>[/<state>]`; shapes must match the net's."""
        for key, a in arrays.items():
            if key.startswith("__"):
                continue
            parts = key.split("/")
            lname, pname = parts[0], parts[1] if len(parts) > 1 else None
            if lname not in self.params or pname is None:
                if strict:
                    raise DataError(f"{source}: array '{key}' names no layer of this network; "
                                    f"the checkpoint belongs to another layer definition")
                continue
            if len(parts) == 2:
                have = self.params[lname].get(pname)
                if have is None:
                    if strict:
                        raise DataError(f"{source}: layer '{lname}' has no parameter '{pname}'")
                    continue
                if tuple(have.shape) != tuple(a.shape):
                    raise DataError(f"{source}: '{key}' has shape {tuple(a.shape)}, the network needs "
                                    f"{tuple(have.shape)}; the layer definition changed since it was saved")
                # xp.array copies (asarray would keep the caller's numpy array, which updates then change)
                self.params[lname][pname] = self.xp.array(a, dtype=have.dtype)
            else:
                self.states[lname].setdefault(pname, {})["/".join(parts[2:])] = self.xp.array(
                    a, dtype=a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype)
        missing = [f"{l}/{p}" for l, ps in self.params.items() for p in ps if f"{l}/{p}" not in arrays]
        if strict and missing:
            raise DataError(f"{source}: no array for {', '.join(missing[:3])}; the checkpoint belongs to another "
                            f"layer definition")

    def num_params(self) -> int:
        return sum(int(a.size) for l in self.layers for k, a in self.params[l.name].items() if k in l.learned)

    def describe(self) -> str:
        """One line per layer: name, type, output shape (C, H, W), parameter count."""
        lines = []
        for l in self.layers:
            n = sum(int(a.size) for k, a in self.params[l.name].items() if k in l.learned)
            shape = "x".join(str(s) for s in l.out_shape)
            neuron = f" +{l.neuron!r}" if l.neuron is not None else ""
            lines.append(f"  {l.name:<14} {l.type:<12} {shape:>14}{neuron}  {n:,} params" if n else
                         f"  {l.name:<14} {l.type:<12} {shape:>14}{neuron}")
        return "\n".join(lines)


def weight_counts(layers) -> dict:
    """{layer: number of weight matrices}, to check per-input lists in the params file."""
    return {l.name: (len(l.in_shapes) if l.weights_per_input else 1) for l in layers}


def parse_params(params_text: str, params_path: str, layers) -> dict:
    return parse_layer_params_text(params_text, params_path, [l.name for l in layers], weight_counts(layers))


__all__ = ["Net", "parse_params", "ConfigError"]
