"""The `init` kinds that follow PyTorch: their bounds and spreads match torch.nn.init and the defaults of
torch.nn.Conv2d / Linear on the same shapes."""
import math

import numpy as np
import pytest

from convnet_cli.layers.init import init_biases, init_weights
from tests.helpers import make_layer

torch = pytest.importorskip("torch")

SHAPE = (64, 16, 5, 5)            # Conv2d(16, 64, 5): fan_in 400, fan_out 1600
FAN_IN, FAN_OUT = 16 * 25, 64 * 25


def _ours(kind):
    return init_weights(np.random.default_rng(0), kind, SHAPE, FAN_IN, FAN_OUT, 0.01).astype(np.float64)


def _torch(fn):
    torch.manual_seed(0)
    t = torch.empty(SHAPE, dtype=torch.float64)
    fn(t)
    return t.numpy()


UNIFORM = {
    "kaiming_uniform": lambda t: torch.nn.init.kaiming_uniform_(t, nonlinearity="relu"),
    "lecun_uniform": lambda t: torch.nn.init.kaiming_uniform_(t, nonlinearity="linear"),
    "pytorch": lambda t: torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5)),  # what Conv2d.reset_parameters does
}
NORMAL = {
    "kaiming_normal": lambda t: torch.nn.init.kaiming_normal_(t, nonlinearity="relu"),
    "lecun_normal": lambda t: torch.nn.init.kaiming_normal_(t, nonlinearity="linear"),
}


@pytest.mark.parametrize("kind", sorted(UNIFORM))
def test_uniform_inits_have_torchs_bound(kind):
    ours, ref = _ours(kind), _torch(UNIFORM[kind])
    bound = {"kaiming_uniform": math.sqrt(6 / FAN_IN), "lecun_uniform": math.sqrt(3 / FAN_IN),
             "pytorch": 1 / math.sqrt(FAN_IN)}[kind]
    # both inside the bound and reaching to within 1% of it (102400 draws)
    for w in (ours, ref):
        assert np.abs(w).max() <= bound + 1e-7
        assert np.abs(w).max() > 0.99 * bound
    assert abs(ours.std() - ref.std()) < 0.02 * ref.std()
    assert abs(ours.mean()) < 0.01 * bound


@pytest.mark.parametrize("kind", sorted(NORMAL))
def test_normal_inits_have_torchs_spread(kind):
    ours, ref = _ours(kind), _torch(NORMAL[kind])
    assert abs(ours.std() - ref.std()) < 0.02 * ref.std()
    assert abs(ours.std() - math.sqrt((2 if kind.startswith("kaiming") else 1) / FAN_IN)) < 0.02 * ours.std()


def test_pytorch_init_matches_conv2d_and_linear_defaults():
    """Weights and biases of `init: pytorch` conv and fc layers span what torch's own modules draw."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 64, 5)
    fc = torch.nn.Linear(300, 200)
    layer = make_layer("conv", [(16, 9, 9)], filters=64, filterSize=5, init="pytorch")
    p = layer.init_params(np.random.default_rng(0))
    fcl = make_layer("fc", [(3, 10, 10)], outputs=200, init="pytorch")
    q = fcl.init_params(np.random.default_rng(0))
    for ours, ref, fan_in in ((p["weights"], conv.weight, 400), (p["biases"], conv.bias, 400),
                              (q["weights"], fc.weight, 300), (q["biases"], fc.bias, 300)):
        ref = ref.detach().numpy()
        assert ours.shape == ref.shape
        bound = 1 / math.sqrt(fan_in)
        assert np.abs(ours).max() <= bound + 1e-7 and np.abs(ref).max() <= bound + 1e-7
        if ours.size > 1000:
            assert np.abs(ours).max() > 0.98 * bound
            assert abs(ours.std() - ref.std()) < 0.05 * ref.std()
    assert np.unique(p["biases"]).size == 64  # drawn, not constant


def test_other_inits_keep_initB_biases():
    assert np.all(init_biases(np.random.default_rng(0), "kaiming_uniform", (5,), 10, 0.5) == np.float32(0.5))
