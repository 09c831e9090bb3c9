"""Cost layers. Each reports the mean cost over the minibatch and its error rates; the net scales the
gradient by the layer's `coeff` (params file). Labels are int class indices (N,) or, with mixup, soft
targets (N, K).
"""
from convnet_cli.backend import cuda_elementwise
from convnet_cli.data.targets import ClassTargets, MultiLabelTargets, kind_of
from convnet_cli.layers.base import CostLayer, Key, register
from convnet_cli.layers.softmax import SoftmaxLayer, log_softmax


def _targets(labels, k, xp, dtype):
    """(N, K) targets from int labels (N,) or soft targets (N, K)."""
    if labels.ndim == 2:
        return labels.astype(dtype, copy=False)
    t = xp.zeros((labels.shape[0], k), dtype=dtype)
    t[xp.arange(labels.shape[0]), labels.astype(xp.int64)] = 1
    return t


def _hard(labels, xp):
    return labels.argmax(axis=1) if labels.ndim == 2 else labels.astype(xp.int64)


def classification_errors(p, labels, topk, xp):
    """(top-1 error, top-k error) of scores p (N, K) against labels, as Python floats."""
    y = _hard(labels, xp)
    n = p.shape[0]
    top1 = float((p.argmax(axis=1) != y).sum()) / n
    if topk <= 1:
        return top1, top1
    k = min(topk, p.shape[1])
    true_score = p[xp.arange(n), y][:, None]
    # a case is a top-k hit when fewer than k classes score strictly higher than the true one
    rank = (p > true_score).sum(axis=1)
    return top1, float((rank >= k).sum()) / n


def _labels_first(layer):
    """The error for a cost layer whose first input is not the labels, with the fix spelt out."""
    first, second = layer.in_names
    fix = (f"the inputs are swapped; write inputs: [{second}, {first}]" if layer.in_shapes[1] == (1, 1, 1)
           else "name the labels first: inputs: [labels, <scores>]")
    return layer.error(f"its first input '{first}' must be the labels (a data layer with dataIdx: 1); {fix}")


def _check_outputs(layer, label_names, fits: bool, hint: str = ""):
    """The one-line error for a classification cost whose scores are not one per class of the data."""
    if fits or not label_names:
        return
    k = len(label_names)
    got = layer.num_scores
    raise layer.error(f"its input '{layer.in_names[layer.scores_input]}' has {got} outputs but the data has {k} "
                      f"classes ({', '.join(map(str, label_names[:5]))}{'...' if k > 5 else ''}); set outputs: {k} on "
                      f"the fc layer feeding it{hint}")


# == softmax + log-loss, fused ============================================================================
# The NumPy reference is LogregCost.forward_fused / backward_fused below with xp = numpy (log_softmax, exp,
# _metrics, then (coeff / N) * (p - t)); softmax_logloss_*_numpy below are that code as functions, for the
# GPU tests to compare the kernels against. On CuPy one thread per case computes the row's softmax, its
# loss and whether it is a top-1 / top-k error, and the three sums come to the host in one transfer.

def _is_cupy(a) -> bool:
    return type(a).__module__.startswith("cupy")


def softmax_logloss_forward_numpy(z, labels, topk: int):
    """z: (N, K) logits, labels: (N,) int -> (p (N, K), cost, top-1 error, top-k error) as LogregCost."""
    import numpy as np

    logp = log_softmax(z, np)
    p = np.exp(logp)
    t = _targets(labels, p.shape[1], np, p.dtype)
    n = p.shape[0]
    cost = -float((t * logp).sum()) / n
    top1, topk_err = classification_errors(p, labels, topk, np)
    return p, cost, top1, topk_err


def softmax_logloss_backward_numpy(p, labels, coeff: float):
    """(coeff / N) * (p - onehot(labels)): the gradient with respect to the logits."""
    import numpy as np

    t = _targets(labels, p.shape[1], np, p.dtype)
    return (coeff / p.shape[0]) * (p - t)


_CUDA_SOURCES = {
    # one thread per row i of z (N, K); p written through the raw pointer
    "softmax_logloss_fwd": (
        "raw T z, raw I y, int32 K, int32 topk",
        "raw T p, T loss, T err1, T errk",
        """
        const ptrdiff_t base = (ptrdiff_t)i * K;
        int yi = (int)y[i];
        if (yi < 0) yi += K;  // as numpy's indexing by -1 does
        if (yi < 0 || yi >= K) {  // a label that names no class: the non-finite cost stops the run
            loss = (T)__int_as_float(0x7fffffff);
            err1 = 1;
            errk = 1;
            for (int k = 0; k < K; ++k) p[base + k] = (T)__int_as_float(0x7fffffff);
        } else {
            T mx = z[base];
            for (int k = 1; k < K; ++k) mx = max(mx, (T)z[base + k]);
            T s = 0;
            for (int k = 0; k < K; ++k) s += exp((T)z[base + k] - mx);
            const T lse = log(s);
            loss = -(((T)z[base + yi] - mx) - lse);
            int am = 0;
            T best = 0;
            for (int k = 0; k < K; ++k) {
                const T pk = exp(((T)z[base + k] - mx) - lse);
                p[base + k] = pk;
                if (k == 0 || pk > best) { best = pk; am = k; }
            }
            const T py = p[base + yi];
            int rank = 0;
            for (int k = 0; k < K; ++k) rank += (T)p[base + k] > py;
            err1 = am != yi ? (T)1 : (T)0;
            errk = topk <= 1 ? err1 : (rank >= min(topk, K) ? (T)1 : (T)0);
        }
        """,
    ),
    # one thread per element of p (N, K)
    "softmax_logloss_bwd": (
        "T p, raw I y, int32 K, T scale",
        "T d",
        """
        const int col = (int)(i % K);
        int yi = (int)y[i / K];
        if (yi < 0) yi += K;
        const T t = col == yi ? (T)1 : (T)0;
        d = scale * (p - t);
        """,
    ),
}


def _cuda_kernel(name: str):
    return cuda_elementwise(_CUDA_SOURCES, name)


def softmax_logloss_forward_cupy(z, labels, topk: int):
    """CUDA twin of softmax_logloss_forward_numpy (labels: (N,) int on the device)."""
    import cupy

    z = cupy.ascontiguousarray(z)
    n, k = z.shape
    p = cupy.empty_like(z)
    loss = cupy.empty(n, dtype=z.dtype)
    err1 = cupy.empty(n, dtype=z.dtype)
    errk = cupy.empty(n, dtype=z.dtype)
    _cuda_kernel("softmax_logloss_fwd")(z, labels, k, int(topk), p, loss, err1, errk)
    sums = cupy.stack([loss.sum(dtype=cupy.float64), err1.sum(dtype=cupy.float64),
                       errk.sum(dtype=cupy.float64)]).get()  # the one wait for the GPU in a training step
    return p, float(sums[0]) / n, float(sums[1]) / n, float(sums[2]) / n


def softmax_logloss_backward_cupy(p, labels, coeff: float):
    """CUDA twin of softmax_logloss_backward_numpy."""
    return _cuda_kernel("softmax_logloss_bwd")(p, labels, p.shape[1], coeff / p.shape[0])


@register(aliases=("cost.crossent",))
class LogregCost(CostLayer):
    """Multinomial logistic regression: -log p(true class). inputs: [labels, probs].

    When `probs` is a softmax layer the net calls forward_fused/backward_fused with the softmax's input,
    computing log-probabilities stably and the gradient as (p - y) / N, as cuda-convnet does."""

    type = "cost.logreg"
    fuses_with = SoftmaxLayer
    scores_input = 1
    reports_error = True
    keys = {"topk": Key("int", 1, min=1),
            "classWeights": Key("floats", None, min=0, doc="one weight per class: the cost is the weighted mean "
                                                           "of the cases' log-losses, as CrossEntropyLoss(weight=)")}
    # cuda-convnet2's params files set topk in the cost's section ([logprob] coeff=1 topk=5); it overrides
    # the layer definition's topk when given
    hyper_defaults = {"coeff": 1.0, "topk": None}

    def check_hyper(self, hyper: dict):
        k = hyper.get("topk")
        if k is not None:
            if float(k) != int(float(k)) or int(float(k)) < 1:
                raise self.error(f"topk {k:g} in the params file must be a whole number of at least 1, e.g. topk: 5")
            hyper["topk"] = int(float(k))

    @property
    def topk(self) -> int:
        """The k of the top-k error: the params file's topk, else the layer definition's."""
        return self.hyper.topk if getattr(self, "hyper", None) is not None and self.hyper.topk is not None \
            else self.props.topk

    def check_data(self, label_names, kind, source=""):
        super().check_data(label_names, kind, source)
        _check_outputs(self, label_names, self.num_scores == len(label_names))

    def infer_shape(self):
        lab, probs = self.in_shapes
        if lab != (1, 1, 1):
            raise _labels_first(self)
        if probs[1:] != (1, 1):
            raise self.error(f"its second input '{self.in_names[1]}' must be class scores of shape (K, 1, 1), "
                             f"got {probs}; put an fc layer and a softmax before it")
        w = self.props.classWeights
        if w is not None:
            if len(w) != probs[0]:
                raise self.error(f"classWeights has {len(w)} values but '{self.in_names[1]}' scores {probs[0]} "
                                 f"classes; give one weight per class, in label order")
            if not any(v > 0 for v in w):
                raise self.error("classWeights are all 0; give every class a weight above 0 (1 = unweighted)")
        return (1, 1, 1)

    def _case_weights(self, t, xp):
        """(N,) weight of each case (its class's weight; soft targets mix them), or None when unweighted."""
        if self.props.classWeights is None:
            return None
        return t @ xp.asarray(self.props.classWeights, dtype=t.dtype)

    def _metrics(self, logp, p, labels, xp):
        t = _targets(labels, p.shape[1], xp, p.dtype)
        n = p.shape[0]
        cw = self._case_weights(t, xp)
        if cw is None:
            cost = -float((t * logp).sum()) / n
        else:
            # the weighted mean, as torch.nn.CrossEntropyLoss(weight=w): sum_i w_yi * loss_i / sum_i w_yi;
            # the backward pass folds these case weights into t (see _weighted)
            cost = -float(((t * logp).sum(axis=1) * cw).sum()) / max(float(cw.sum()), 1e-30)
        top1, topk = classification_errors(p, labels, self.topk, xp)
        return cost, {"cost": cost, "error": top1, "topk_error": topk}, (t if cw is None else (t, cw))

    def forward(self, xs, params, ctx):
        xp = ctx.xp
        labels, p = xs[0], xs[1].reshape(xs[1].shape[0], -1)
        tiny = xp.finfo(p.dtype).tiny
        logp = xp.log(xp.maximum(p, tiny))
        cost, metrics, t = self._metrics(logp, p, labels, xp)
        return (cost, metrics), (p, t, xs[1].shape)

    def backward(self, coeff, cache, params, ctx):
        xp = ctx.xp
        p, t, shape = cache
        if isinstance(t, tuple):  # classWeights: d/dp of -sum_i cw_i log p_i,yi / sum cw
            t, cw = t
            dp = -(coeff / max(float(cw.sum()), 1e-30)) * (t * cw[:, None]) / xp.maximum(p, xp.finfo(p.dtype).tiny)
            return [None, dp.reshape(shape)], {}
        dp = -(coeff / p.shape[0]) * t / xp.maximum(p, xp.finfo(p.dtype).tiny)
        return [None, dp.reshape(shape)], {}

    def forward_fused(self, labels, logits, ctx):
        xp = ctx.xp
        shape = logits.shape
        z = logits.reshape(shape[0], -1)
        if _is_cupy(z) and labels.ndim == 1 and self.props.classWeights is None:
            # one kernel for softmax, log-loss and both error counts; the cache keeps the int labels
            p, cost, top1, topk = softmax_logloss_forward_cupy(z, labels, self.topk)
            return (cost, {"cost": cost, "error": top1, "topk_error": topk}), (p, labels, shape)
        logp = log_softmax(z, xp)
        p = xp.exp(logp)
        cost, metrics, t = self._metrics(logp, p, labels, xp)
        return (cost, metrics), (p, t, shape)

    def backward_fused(self, coeff, cache, ctx):
        """Gradient with respect to the softmax's input (logits)."""
        p, t, shape = cache
        if isinstance(t, tuple):  # classWeights: sum_i cw_i (p_i - t_i) / sum cw (per case, soft targets too)
            t, cw = t
            return ((coeff / max(float(cw.sum()), 1e-30)) * cw[:, None] * (p - t)).reshape(shape)
        if t.ndim == 1:  # int labels: the CUDA path of forward_fused
            return softmax_logloss_backward_cupy(p, t, coeff).reshape(shape)
        return ((coeff / p.shape[0]) * (p - t)).reshape(shape)


def softplus(x, xp):
    """log(1 + exp(x)), computed without overflow."""
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


@register(aliases=("cost.binxent",))
class BCECost(CostLayer):
    """Binary cross-entropy on logistic outputs in (0, 1). inputs: [labels, outputs].

    With one output unit the label (0/1) is the target; with K units each unit is a one-vs-rest target:
    the one-hot label, or on multi-label batches (data/targets.py) the case's targets, (N, K) float with 1
    present, 0 absent and -1 unknown. Unknown entries add nothing to the cost or the gradient. The cost is
    the sum over units, averaged over the cases of the minibatch. `posWeight` (one number, or one per class
    in label order) weighs the positive term, as PyTorch's pos_weight.

    When the layer feeding it has `neuron: logistic` and feeds nothing else, the net hands this cost the
    neuron's input (the logits) too: the cost is then computed from the logits (log p = -softplus(-z)) and
    the gradient taken with respect to them, (p (w t + 1 - t) - w t) / N, as BCEWithLogitsLoss: no clipping
    of saturated outputs."""

    type = "cost.bce"
    keys = {"posWeight": Key("floats", 1.0, min=0, doc="the weight of the positive term: one number, or one "
                                                        "per class in label order")}
    scores_input = 1
    reports_error = True
    trains_on = (ClassTargets, MultiLabelTargets)
    fuses_neuron_name = "logistic"
    # set by check_data: the batches carry multi-label targets (the error is then per class decision)
    multi_label_data = False

    def check_data(self, label_names, kind, source=""):
        k = len(label_names)
        multi_label = kind_of(kind).multi_label
        self.multi_label_data = multi_label
        # one logistic unit scores the second of two classes (0/1 labels); otherwise one unit per class
        hint = "" if multi_label else (", or make the batches with make-batches --multi-label (several classes "
                                       "at once, no background class)")
        _check_outputs(self, label_names, self.num_scores == k or (not multi_label and k == 2 and self.num_scores == 1),
                       hint)

    def class_probabilities(self, scores, num_classes, xp):
        """One logistic unit scoring the second of two classes (0/1 labels): (1 - p, p), one column per class,
        as the CSV, the report, detect and the ONNX model give every other net's classes."""
        if scores.shape[1] == 1 and num_classes == 2:
            return xp.concatenate([1 - scores, scores], axis=1)
        return scores

    def class_probabilities_onnx(self, g, y, num_classes):
        if self.num_scores == 1 and num_classes == 2:
            one = g.const("one", [[1.0]])
            return g.op("Concat", [g.op("Sub", [one, y], "probs/absent"), y], "probs/classes", axis=1)
        return y

    def input_problem(self, inputs):
        src = inputs[self.scores_input]
        if isinstance(src, SoftmaxLayer):
            return (f"its scores input '{src.name}' is a softmax, whose outputs share one unit of probability "
                    f"(one class per case), while cost.bce scores each class on its own; feed it the fc layer "
                    f"before '{src.name}' with neuron: logistic (or use cost.logreg on the softmax)")
        return None

    def infer_shape(self):
        lab, out = self.in_shapes
        if lab != (1, 1, 1):
            raise _labels_first(self)
        if out[1:] != (1, 1):
            raise self.error(f"its second input '{self.in_names[1]}' must have shape (K, 1, 1), got {out}")
        w = self.pos_weights
        if len(w) not in (1, out[0]):
            raise self.error(f"posWeight has {len(w)} values but '{self.in_names[1]}' has {out[0]} outputs; give "
                             f"one number, or one per class ({out[0]}) in label order")
        return (1, 1, 1)

    def _targets(self, labels, k, xp, dtype):
        """(t (N, K) with unknown entries 0, mask (N, K) of the known entries or None when all are)."""
        if k == 1 and labels.ndim == 2 and labels.shape[1] == 2:  # mixup's soft 0/1 labels
            labels = labels[:, 1:]
        if k == 1 and labels.ndim == 1:
            return labels.astype(dtype).reshape(-1, 1), None
        t = _targets(labels, k, xp, dtype)
        if labels.ndim == 2:
            known = t >= 0
            if not bool(known.all()):
                return xp.where(known, t, 0).astype(dtype, copy=False), known.astype(dtype)
        return t, None

    @property
    def pos_weights(self) -> list:
        """posWeight as a list: one number, or one per class."""
        w = self.props.posWeight
        return [float(v) for v in w] if isinstance(w, (list, tuple)) else [float(w)]

    def _pos_weight(self, k, xp, dtype):
        w = self.pos_weights
        if len(w) == 1:
            return float(w[0])
        return xp.asarray(w, dtype=dtype).reshape(1, k)

    def _metrics(self, cost, p, labels, t, mask, xp):
        n = p.shape[0]
        if p.shape[1] == 1:
            error = float(((p[:, 0] > 0.5) != (t[:, 0] > 0.5)).sum()) / n
        elif self.multi_label_data:
            # the class decisions at 0.5 that are wrong, per case and class (an unknown entry is never wrong):
            # a mean over cases, as the costs are, so shares of a minibatch add up to the whole
            wrong = (p >= 0.5) != (t >= 0.5)
            if mask is not None:
                wrong = wrong & (mask > 0)
            error = float(wrong.sum()) / (n * p.shape[1])
        else:
            error, _ = classification_errors(p, labels, 1, xp)
        return {"cost": cost, "error": error, "topk_error": error}

    def forward(self, xs, params, ctx):
        xp = ctx.xp
        labels, p = xs[0], xs[1].reshape(xs[1].shape[0], -1)
        t, mask = self._targets(labels, p.shape[1], xp, p.dtype)
        eps = 1e-7 if p.dtype.itemsize <= 4 else 1e-15
        pc = xp.clip(p, eps, 1 - eps)
        w = self._pos_weight(p.shape[1], xp, p.dtype)
        n = p.shape[0]
        per = w * t * xp.log(pc) + (1 - t) * xp.log(1 - pc)
        if mask is not None:
            per = per * mask
        cost = -float(per.sum()) / n
        return (cost, self._metrics(cost, p, labels, t, mask, xp)), (pc, t, mask, xs[1].shape)

    def backward(self, coeff, cache, params, ctx):
        pc, t, mask, shape = cache
        w = self._pos_weight(pc.shape[1], ctx.xp, pc.dtype)
        d = -(coeff / pc.shape[0]) * (w * t / pc - (1 - t) / (1 - pc))
        if mask is not None:
            d = d * mask
        return [None, d.reshape(shape)], {}

    def forward_logits(self, labels, logits, probs, ctx):
        """The cost from the logits z of the logistic outputs `probs` (see the class docstring)."""
        xp = ctx.xp
        z = logits.reshape(logits.shape[0], -1)
        p = probs.reshape(z.shape)
        t, mask = self._targets(labels, z.shape[1], xp, z.dtype)
        w = self._pos_weight(z.shape[1], xp, z.dtype)
        per = w * t * softplus(-z, xp) + (1 - t) * softplus(z, xp)
        if mask is not None:
            per = per * mask
        cost = float(per.sum()) / z.shape[0]
        return (cost, self._metrics(cost, p, labels, t, mask, xp)), (p, t, mask, w, logits.shape)

    def backward_logits(self, coeff, cache, ctx):
        """Gradient with respect to the logits."""
        p, t, mask, w, shape = cache
        d = (coeff / p.shape[0]) * (p * (w * t + 1 - t) - w * t)
        if mask is not None:
            d = d * mask
        return d.reshape(shape)


@register
class Sum2Cost(CostLayer):
    """Sum of squares: cost = sum(x^2) / 2 per case, averaged over the minibatch. One input, no labels."""

    type = "cost.sum2"
    keys = {}
    needs_labels = False
    min_inputs = 1
    max_inputs = 1

    def forward(self, xs, params, ctx):
        x = xs[0]
        n = x.shape[0]
        cost = 0.5 * float((x * x).sum()) / n
        return (cost, {"cost": cost, "error": None, "topk_error": None}), x

    def backward(self, coeff, x, params, ctx):
        return [(coeff / x.shape[0]) * x], {}
