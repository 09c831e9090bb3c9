"""The fused CuPy updater kernels against the NumPy updaters, step by step, and gradient clipping on the device.
Skipped (with the reason) where CuPy or a GPU is missing."""
from __future__ import annotations

import numpy as np
import pytest

from convnet_cli import updaters as U
from convnet_cli.config.layer_params import LearnSpec
from convnet_cli.config.schedules import parse_schedule
from tests.gpu.device import CUPY as cupy  # None without a GPU: conftest.py skips every test then


def spec_for(updater, lr, mom=0.0, wc=0.0, **kw):
    return LearnSpec(epsW=[parse_schedule(lr)], epsB=parse_schedule(lr), momW=[mom], momB=mom, wc=[wc],
                     updater=updater, **kw)


CASES = {  # name -> (updater, lr, mom, wc, extra spec keys)
    "sgd": ("sgd", 0.05, 0.9, 0.01, {}),
    "sgd-plain": ("sgd", 0.1, 0.0, 0.0, {}),
    "adam": ("adam", 0.01, 0.9, 0.001, {}),
    "adam-betas": ("adam", 0.003, 0.8, 0.0, dict(beta2=0.99, epsilon=1e-6)),
    "rmsprop": ("rmsprop", 0.01, 0.0, 0.001, {}),
    "rmsprop-mom": ("rmsprop", 0.01, 0.9, 0.0, dict(rho=0.9)),
    "adagrad": ("adagrad", 0.1, 0.0, 0.001, {}),
    "adadelta": ("adadelta", 1.0, 0.0, 0.001, {}),
    "adadelta-rho": ("adadelta", 1.0, 0.0, 0.0, dict(rho=0.95, epsilon=1e-5)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fused_updater_matches_numpy(name):
    updater, lr, mom, wc, extra = CASES[name]
    spec = spec_for(updater, lr, mom, wc, **extra)
    fn = U.UPDATERS[updater]
    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 19)).astype(np.float32)  # sizes that are multiples of nothing
    gw = cupy.asarray(w)
    state, gstate = {}, {}
    for step in range(7):
        g = rng.standard_normal(w.shape).astype(np.float32)
        rate = lr * (0.9 ** step)  # a learning rate that moves, as a schedule's does
        fn(w, g, state, rate, mom, wc, spec)
        fn(gw, cupy.asarray(g), gstate, rate, mom, wc, spec)
        assert type(gw).__module__.startswith("cupy")
        np.testing.assert_allclose(cupy.asnumpy(gw), w, rtol=2e-5, atol=2e-6, err_msg=f"{name} step {step}")
    assert state.keys() == gstate.keys()
    for k in state:
        assert gstate[k].dtype == state[k].dtype, k
        np.testing.assert_allclose(cupy.asnumpy(gstate[k]), state[k], rtol=2e-5, atol=1e-6, err_msg=k)


def test_every_updater_has_a_cuda_twin():
    for name, rule in U.UPDATERS.items():
        assert callable(type(rule).update_gpu) and type(rule).update_gpu is not U.UpdateRule.update_gpu, name
    assert {c[0] for c in CASES.values()} == set(U.UPDATERS)


@pytest.mark.parametrize("clip,clip_norm", [(None, 0.5), (None, 1e6), (0.3, 0.5), (0.3, None)])
def test_clipping_on_the_device(clip, clip_norm):
    rng = np.random.default_rng(1)
    grads = {"weights": rng.standard_normal((6, 5)).astype(np.float32),
             "biases": rng.standard_normal(6).astype(np.float32)}
    want = U.clip_gradients(dict(grads), clip, clip_norm)
    got = U.clip_gradients({k: cupy.asarray(v) for k, v in grads.items()}, clip, clip_norm)
    for k in grads:
        assert type(got[k]).__module__.startswith("cupy") and got[k].dtype == np.float32
        np.testing.assert_allclose(cupy.asnumpy(got[k]), want[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_update_layer_on_the_device_keeps_the_step_on_the_device():
    spec = spec_for("adam", 0.01, 0.9, 0.0)
    params = {"weights": cupy.ones((3, 4), dtype=cupy.float32), "biases": cupy.zeros(3, dtype=cupy.float32)}
    states = {}
    for _ in range(3):
        grads = {"weights": cupy.full((3, 4), 0.5, dtype=cupy.float32), "biases": cupy.ones(3, dtype=cupy.float32)}
        U.update_layer(params, grads, states, spec, progress=0.0, epoch=0.0)
    step = states["weights"]["step"]
    assert type(step).__module__.startswith("cupy") and step.dtype == np.float32 and float(step[0]) == 3
