"""DataProvider: order and seeds, normalisation, NHWC layout, prefetch in a thread, bounded memory,
resuming mid-epoch, and the augmentations."""
from __future__ import annotations

import gc
import threading
import tracemalloc

import numpy as np
import pytest

from convnet_cli.backend import CPU
from convnet_cli.data.batch_files import BatchSet, encode_batch
from convnet_cli.fileio import write_pickle_atomic
from convnet_cli.data.provider import DataProvider
from convnet_cli.errors import ConfigError, DataError


def write_set(folder, shape=(2, 3, 5), n_batches=5, per_batch=7, n_classes=3, seed=0, dtype="float32"):
    """A batch set whose case k of batch b has values 100*b + k + (position in the case)/1000."""
    folder.mkdir(parents=True, exist_ok=True)
    num_vis = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    all_rows = []
    for b in range(1, n_batches + 1):
        rows = np.array([[100 * b + k + j / 1000 for j in range(num_vis)] for k in range(per_batch)], np.float32)
        rows += rng.normal(0, 0.01, size=rows.shape).astype(np.float32)
        labels = [(b + k) % n_classes for k in range(per_batch)]
        batch, seen = encode_batch(rows.T, labels, [f"b{b}/c{k}" for k in range(per_batch)], dtype)
        write_pickle_atomic(folder / f"data_batch_{b}", batch)
        all_rows.append(seen.T)
    train = np.concatenate(all_rows[:-1]).astype(np.float64)
    meta = {"label_names": [f"k{i}" for i in range(n_classes)], "num_vis": num_vis, "data_shape": list(shape),
            "num_cases_per_batch": per_batch, "num_batches": n_batches, "train_range": [1, n_batches - 1],
            "test_range": [n_batches, n_batches],
            "data_mean": train.mean(axis=0).astype(np.float32).reshape(-1, 1),
            "data_std": train.std(axis=0).astype(np.float32).reshape(-1, 1),
            "features": None, "skipped": 0, "batch_cases": [per_batch] * n_batches}
    write_pickle_atomic(folder / "batches.meta", meta)
    return BatchSet(folder)


def collect(provider, epoch, skip=0):
    out = []
    for bnum, mbs in provider.iter_epoch(epoch, skip=skip):
        for mb in mbs:
            out.append((bnum, mb.x.copy(), np.array(mb.labels), list(mb.filenames)))
    return out


@pytest.fixture
def bset(tmp_path):
    return write_set(tmp_path / "set")


def test_test_mode_order_layout_and_normalisation(bset):
    p = DataProvider(bset, [3, 1, 2], mini=3, backend=CPU, train=False)
    got = collect(p, epoch=1)
    assert [g[0] for g in got] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [len(g[3]) for g in got] == [3, 3, 1] * 3
    assert p.num_cases() == 21 and p.num_minibatches() == 9
    mean, std = bset.data_mean[:, 0], bset.data_std[:, 0]
    x = np.concatenate([g[1] for g in got])
    labels = np.concatenate([g[2] for g in got])
    assert x.shape == (21, 3, 5, 2) and x.dtype == np.float32 and labels.dtype == np.int32
    names = sum((g[3] for g in got), [])
    assert names == [f"b{b}/c{k}" for b in (1, 2, 3) for k in range(7)]
    for i, name in enumerate(names):
        b, k = int(name[1]), int(name.split("c")[1])
        rows, y, _ = bset.load_batch(b)
        want = ((rows[k] - mean) / std).reshape(2, 3, 5).transpose(1, 2, 0)   # (C,H,W) -> (H,W,C)
        np.testing.assert_allclose(x[i], want, rtol=1e-5, atol=1e-5)
        assert labels[i] == y[k]
    raw = DataProvider(bset, [1], mini=7, backend=CPU, train=False, normalize=False)
    x0 = collect(raw, 1)[0][1]
    np.testing.assert_array_equal(x0, bset.load_batch(1)[0].reshape(7, 2, 3, 5).transpose(0, 2, 3, 1))


def test_train_order_is_seeded_by_epoch_and_resumable(bset):
    a = DataProvider(bset, [1, 2, 3, 4], mini=4, backend=CPU, seed=7)
    b = DataProvider(bset, [1, 2, 3, 4], mini=4, backend=CPU, seed=7)
    e1, e1b, e2 = collect(a, 1), collect(b, 1), collect(a, 2)
    assert all(x[0] == y[0] and np.array_equal(x[1], y[1]) and x[3] == y[3] for x, y in zip(e1, e1b))
    orders = {tuple(DataProvider(bset, [1, 2, 3, 4], 4, CPU, seed=7).epoch_order(e)) for e in range(1, 8)}
    assert len(orders) > 1 and all(sorted(o) == [1, 2, 3, 4] for o in orders)
    assert [g[0] for g in e1] != [g[0] for g in e2] or any(g[3] != h[3] for g, h in zip(e1, e2))
    # cases of a batch shuffled, all there
    for bnum in (1, 2):
        names = sum((g[3] for g in e1 if g[0] == bnum), [])
        assert sorted(names) == [f"b{bnum}/c{k}" for k in range(7)]
    assert any(sum((g[3] for g in e1 if g[0] == bn), []) != [f"b{bn}/c{k}" for k in range(7)] for bn in (1, 2, 3, 4))
    # resuming at a batch boundary sees exactly the same data (a fresh provider, as after a restart)
    order = a.epoch_order(1)
    tail = collect(DataProvider(bset, [1, 2, 3, 4], 4, CPU, seed=7), 1, skip=2)
    full_tail = [g for g in e1 if g[0] in order[2:]]
    assert len(tail) == len(full_tail) and all(
        x[0] == y[0] and np.array_equal(x[1], y[1]) and x[3] == y[3] for x, y in zip(tail, full_tail))
    other = collect(DataProvider(bset, [1, 2, 3, 4], 4, CPU, seed=8), 1)
    assert [g[3] for g in other] != [g[3] for g in e1]


def test_loads_in_a_background_thread_at_most_one_ahead(bset):
    events = []
    real = bset.read_raw

    def read_raw(i):
        events.append(("load", i, threading.get_ident()))
        return real(i)

    bset.read_raw = read_raw
    p = DataProvider(bset, [1, 2, 3, 4, 5], mini=2, backend=CPU, train=False)
    main = threading.get_ident()
    for j, (bnum, mbs) in enumerate(p.iter_epoch(1)):
        for mb in mbs:
            loads = [e for e in events if e[0] == "load"]
            assert len(loads) <= j + 2          # the current batch and at most one ahead
        events.append(("done", bnum, None))
    assert all(e[2] != main for e in events if e[0] == "load")
    assert p.loader_threads and main not in p.loader_threads
    # leaving an epoch early stops the loading
    events.clear()
    for bnum, mbs in p.iter_epoch(1):
        next(iter(mbs))
        break
    gc.collect()
    assert len([e for e in events if e[0] == "load"]) <= 2


def test_memory_stays_near_two_batches(tmp_path):
    n_batches, per_batch, shape = 8, 64, (1, 32, 64)           # 512 KiB per batch in float32
    bs = write_set(tmp_path / "big", shape=shape, n_batches=n_batches, per_batch=per_batch)
    batch_bytes = per_batch * int(np.prod(shape)) * 4
    p = DataProvider(bs, bs.batch_numbers, mini=16, backend=CPU, seed=1, augment="timeshift,freqmask")
    tracemalloc.start()
    try:
        for _, mbs in p.iter_epoch(1):
            for mb in mbs:
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * batch_bytes, f"peak {peak / batch_bytes:.1f} batches"


def test_std_floor_and_uint8_sets(tmp_path):
    bs = write_set(tmp_path / "u8", dtype="uint8")
    meta_std = bs.data_std.copy()
    bs._std = np.zeros_like(meta_std)            # a constant feature: std 0
    x = collect(DataProvider(bs, [1], 7, CPU, train=False), 1)[0][1]
    assert np.isfinite(x).all()
    bs._std = meta_std
    x = collect(DataProvider(bs, [1], 7, CPU, train=False), 1)[0][1]
    rows = bs.load_batch(1)[0]
    want = ((rows - bs.data_mean[:, 0]) / bs.data_std[:, 0]).reshape(7, 2, 3, 5).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-4)


# ---- augmentations -------------------------------------------------------------------------------------

@pytest.fixture
def wide(tmp_path):
    return write_set(tmp_path / "wide", shape=(1, 20, 40), n_batches=2, per_batch=16, n_classes=4)


def pair(bs, augment, mini=8, epoch=3):
    plain = collect(DataProvider(bs, [1], mini, CPU, seed=5), epoch)
    aug = collect(DataProvider(bs, [1], mini, CPU, seed=5, augment=augment), epoch)
    return (np.concatenate([g[1] for g in plain]), np.concatenate([g[1] for g in aug]),
            [g[2] for g in aug], sum((g[3] for g in aug), []), sum((g[3] for g in plain), []))


def test_timeshift_is_a_circular_roll(wide):
    x, xa, _, na, n = pair(wide, ["timeshift"])
    assert na == n                                         # same shuffle with or without augmentation
    shifts = []
    for i in range(len(x)):
        match = [s for s in range(-4, 5) if np.array_equal(np.roll(x[i], s, axis=1), xa[i])]
        assert match, i
        shifts.append(match[0])
    assert len(set(shifts)) > 1


def test_freq_and_time_masks(wide):
    for aug, axis, size in (("freqmask", 0, 20), ("timemask", 1, 40)):
        x, xa, _, _, _ = pair(wide, aug)
        widths = []
        for i in range(len(x)):
            zeroed = np.flatnonzero((xa[i] == 0).all(axis=1 - axis)[..., 0])
            kept = np.setdiff1d(np.arange(size), zeroed)
            np.testing.assert_array_equal(np.take(xa[i], kept, axis=axis), np.take(x[i], kept, axis=axis))
            if zeroed.size:
                assert np.array_equal(zeroed, np.arange(zeroed[0], zeroed[-1] + 1))   # one band
            assert zeroed.size <= int(0.15 * size)
            widths.append(zeroed.size)
        assert max(widths) > 0


def test_mixup_soft_targets(wide):
    x, xa, ys, _, _ = pair(wide, "mixup")
    assert all(y.dtype == np.float32 and y.shape == (8, 4) for y in ys)
    y = np.concatenate(ys)
    np.testing.assert_allclose(y.sum(axis=1), 1, atol=1e-6)
    assert (y.max(axis=1) >= 0.5 - 1e-6).all() and (y.max(axis=1) < 1).any()
    for i in range(len(x)):
        lo = (i // 8) * 8
        fits = []
        for j in range(lo, lo + 8):      # x_i mixed with some case of the same minibatch
            a = np.stack([x[i].ravel(), x[j].ravel()], axis=1)
            coef, *_ = np.linalg.lstsq(a, xa[i].ravel(), rcond=None)
            if np.allclose(a @ coef, xa[i].ravel(), atol=1e-4) and abs(coef.sum() - 1) < 1e-4:
                fits.append(coef[0])
        assert fits and max(fits) >= 0.5 - 1e-5


def test_augment_resumes_identically_and_not_in_test_mode(wide):
    aug = ("timeshift", "freqmask", "timemask", "mixup")
    a = collect(DataProvider(wide, [1, 2], 8, CPU, seed=2, augment=aug), 4)
    b = collect(DataProvider(wide, [1, 2], 8, CPU, seed=2, augment=aug), 4, skip=1)
    assert all(np.array_equal(u[1], v[1]) and np.array_equal(u[2], v[2]) for u, v in zip(a[-len(b):], b))
    t = DataProvider(wide, [1, 2], 8, CPU, train=False, augment=aug)
    assert t.augment == ()
    plain = collect(DataProvider(wide, [1, 2], 8, CPU, train=False), 1)
    assert all(np.array_equal(u[1], v[1]) for u, v in zip(collect(t, 1), plain))


def test_bad_provider_arguments(wide, tmp_path):
    with pytest.raises(ConfigError, match="unknown augmentation 'freqmsk' .did you mean 'freqmask'"):
        DataProvider(wide, [1], 8, CPU, augment="timeshift,freqmsk")
    with pytest.raises(DataError, match="batch 9 is not there"):
        DataProvider(wide, [1, 9], 8, CPU)
    with pytest.raises(ConfigError, match="--mini"):
        DataProvider(wide, [1], 0, CPU)
    wide.label_names = []
    with pytest.raises(ConfigError, match="mixup needs labeled batches"):
        DataProvider(wide, [1], 8, CPU, augment=["mixup"])


def test_provider_on_made_batches(tiny_batches):
    bs = BatchSet(tiny_batches)
    p = DataProvider(bs, bs.train_range, mini=5, backend=CPU, seed=0, augment="timemask")
    got = collect(p, 1)
    assert [len(g[3]) for g in got] == [5, 3] and got[0][1].shape == (5, 16, 30, 1)
    x = np.concatenate([g[1] for g in collect(DataProvider(bs, bs.train_range, 8, CPU, train=False), 1)])
    # normalised with the training statistics: mean 0, std 1 per feature over the training range
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=0)[x.std(axis=0) > 0], 1, atol=1e-3)
