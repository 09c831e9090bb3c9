"""Cost layers. Each reports the mean cost over the minibatch and its error rates; the net scales the
gradient by the layer's `coeff` (params file). Labels are int class indices (N,) or, with mixup, soft
targets (N, K).
"""
from convnet_cli.layers.base import CostLayer, Key, register
from convnet_cli.layers.softmax import log_softmax


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


@register(aliases=("cost.crossent",))
class LogregCost(CostLayer):
    """Multinomial logistic regression: -log p(true class). inputs: [labels, probs].

    When `probs` is a softmax layer the net calls forward_fused/backward_fused with the softmax's input,
    computing log-probabilities stably and the gradient as (p - y) / N, as cuda-convnet does."""

    type = "cost.logreg"
    keys = {"topk": Key("int", 1, min=1)}

    def infer_shape(self):
        lab, probs = self.in_shapes
        if lab != (1, 1, 1):
            raise _labels_first(self)
        if probs[1:] != (1, 1):
            raise self.error(f"its second input '{self.in_names[1]}' must be class scores of shape (K, 1, 1), "
                             f"got {probs}; put an fc layer and a softmax before it")
        return (1, 1, 1)

    def _metrics(self, logp, p, labels, xp):
        t = _targets(labels, p.shape[1], xp, p.dtype)
        n = p.shape[0]
        cost = -float((t * logp).sum()) / n
        top1, topk = classification_errors(p, labels, self.props.topk, xp)
        return cost, {"cost": cost, "error": top1, "topk_error": topk}, t

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
        dp = -(coeff / p.shape[0]) * t / xp.maximum(p, xp.finfo(p.dtype).tiny)
        return [None, dp.reshape(shape)], {}

    def forward_fused(self, labels, logits, ctx):
        xp = ctx.xp
        shape = logits.shape
        z = logits.reshape(shape[0], -1)
        logp = log_softmax(z, xp)
        p = xp.exp(logp)
        cost, metrics, t = self._metrics(logp, p, labels, xp)
        return (cost, metrics), (p, t, shape)

    def backward_fused(self, coeff, cache, ctx):
        """Gradient with respect to the softmax's input (logits)."""
        p, t, shape = cache
        return ((coeff / p.shape[0]) * (p - t)).reshape(shape)


@register(aliases=("cost.binxent",))
class BCECost(CostLayer):
    """Binary cross-entropy on logistic outputs in (0, 1). inputs: [labels, outputs].

    With one output unit the label (0/1) is the target; with K units each unit is a one-vs-rest target
    (the one-hot label). `posWeight` weighs the positive term, as in PyTorch's pos_weight."""

    type = "cost.bce"
    keys = {"posWeight": Key("float", 1.0, min=0)}

    def infer_shape(self):
        lab, out = self.in_shapes
        if lab != (1, 1, 1):
            raise _labels_first(self)
        if out[1:] != (1, 1):
            raise self.error(f"its second input '{self.in_names[1]}' must have shape (K, 1, 1), got {out}")
        return (1, 1, 1)

    def _targets(self, labels, k, xp, dtype):
        if k == 1:
            y = labels[:, 1] if labels.ndim == 2 else labels
            return y.astype(dtype).reshape(-1, 1)
        return _targets(labels, k, xp, dtype)

    def forward(self, xs, params, ctx):
        xp = ctx.xp
        labels, p = xs[0], xs[1].reshape(xs[1].shape[0], -1)
        t = self._targets(labels, p.shape[1], xp, p.dtype)
        eps = 1e-7 if p.dtype.itemsize <= 4 else 1e-15
        pc = xp.clip(p, eps, 1 - eps)
        w = self.props.posWeight
        n = p.shape[0]
        cost = -float((w * t * xp.log(pc) + (1 - t) * xp.log(1 - pc)).sum()) / n
        if p.shape[1] == 1:
            error = float(((p[:, 0] > 0.5) != (t[:, 0] > 0.5)).sum()) / n
        else:
            error, _ = classification_errors(p, labels, 1, xp)
        return (cost, {"cost": cost, "error": error, "topk_error": error}), (pc, t, xs[1].shape)

    def backward(self, coeff, cache, params, ctx):
        pc, t, shape = cache
        w = self.props.posWeight
        d = -(coeff / pc.shape[0]) * (w * t / pc - (1 - t) / (1 - pc))
        return [None, d.reshape(shape)], {}


@register
class Sum2Cost(CostLayer):
    """Sum of squares: cost = sum(x^2) / 2 per case, averaged over the minibatch. One input, no labels."""

    type = "cost.sum2"
    keys = {}
    min_inputs = 1
    max_inputs = 1

    def forward(self, xs, params, ctx):
        x = xs[0]
        n = x.shape[0]
        cost = 0.5 * float((x * x).sum()) / n
        return (cost, {"cost": cost, "error": None, "topk_error": None}), x

    def backward(self, coeff, x, params, ctx):
        return [(coeff / x.shape[0]) * x], {}
