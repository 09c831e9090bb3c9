"""The training loop: epochs over the train range's batch files, minibatches within them, a test and a
checkpoint every `test_freq` batch files, resumable at any checkpoint with identical results.

Every random draw (batch order, shuffles, augmentation, dropout masks) comes from a generator seeded by
(seed, epoch, batch[, minibatch]) rather than from one running stream, so a run restarted from a
checkpoint sees exactly the data and masks the uninterrupted run would have seen.
"""
from __future__ import annotations

import datetime
import functools
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field, replace

import click
import numpy as np

from convnet_cli.backend import get_backend
from convnet_cli.config.yamlio import display_name, read_text
from convnet_cli.data.targets import kind_of
from convnet_cli.errors import ConfigError, NonFiniteError
from convnet_cli.fileio import copy_atomic, write_text_atomic
from convnet_cli.net import Net
from convnet_cli.parallel import get_world, on_root, rank_device, share_node_cores
from convnet_cli.progress import TrainProgress
from convnet_cli.train import best as best_by
from convnet_cli.train.checkpoint import (RunState, load_checkpoint, newest_checkpoint, prune_checkpoints,
                                          read_state, resolve_checkpoint, save_checkpoint)
from convnet_cli.train.data_parallel import DataParallel, check_same_batches
from convnet_cli.train.init_from import init_from
from convnet_cli.train.run_checks import (MAX_RANGE, absolute_paths, append_log, check_batches_fit,
                                          check_labels, check_options, clean_stale_temps, cut_log,
                                          keep_params_version, overlap_warning, saved_path)

@dataclass
class TrainOptions:
    data_path: str = None
    save_path: str = None
    layer_def: str = None
    layer_params: str = None
    train_range: list = None
    test_range: list = None
    epochs: int = 10
    mini: int = 128
    test_freq: int | None = None  # None: once per epoch
    device: str = "cpu"
    seed: int = 0
    max_checkpoints: int | None = 5  # the newest 5 plus best.npz; 0 keeps all
    augment: list = field(default_factory=list)
    early_stop: int | None = None
    best_by: str | None = None   # cost, error, auc or map: which test makes best.npz (train/best.py); None:
                                 # map on multi-label batches, else cost (start() settles it)
    balance: bool = False
    init_from: str | None = None
    quiet: bool = False


def parse_range(text, flag: str) -> list:
    """'1-4' -> [1, 2, 3, 4]; '5' -> [5]; '1-3,6' -> [1, 2, 3, 6]."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        return [int(t) for t in text]
    out = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(p) for p in part.split("-", 1))
                if b < a:
                    raise ValueError
                if b - a + 1 > MAX_RANGE or len(out) > MAX_RANGE:
                    raise ConfigError(f"{flag} {text!r}: names {b - a + 1:,} batches; a range may name at most "
                                      f"{MAX_RANGE:,} (give the batch numbers the folder holds)")
                out.extend(range(a, b + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected a batch range like 1-4 or 5") from None
    if not out:
        raise ConfigError(f"{flag} {text!r}: expected a batch range like 1-4 or 5")
    return out


def derive_seed(*parts) -> int:
    """A 63-bit seed from several integers (same on every machine and device)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def new_run_dir(save_path: str) -> str:
    stamp = datetime.datetime.now().strftime("ConvNet__%Y-%m-%d_%H.%M.%S")
    if os.path.exists(save_path) and not os.path.isdir(save_path):
        raise ConfigError(f"--save-path {save_path}: is a file; give a folder (it receives the run directory)")
    try:
        os.makedirs(save_path, exist_ok=True)
        path = os.path.join(save_path, stamp)
        n = 2
        while os.path.exists(path):
            path = os.path.join(save_path, f"{stamp}_{n}")
            n += 1
        os.makedirs(path)
    except OSError as exc:
        raise ConfigError(f"--save-path {save_path}: cannot create the run directory there "
                          f"({exc.strerror or exc}); give a folder you can write to") from None
    return path


class _Interrupt:
    """SIGINT sets a flag; the loop checkpoints at the next minibatch boundary and exits 130."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.requested = True

        try:
            self._old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not in the main thread (e.g. a notebook worker)
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class Trainer:
    def __init__(self, options: TrainOptions, run_dir: str, net: Net, batchset, state: RunState, echo=None):
        from convnet_cli.data.provider import DataProvider

        self.o = options
        self.run_dir = run_dir
        self.net = net
        self.batchset = batchset
        self.state = state
        self.echo = echo or (lambda msg: click.echo(msg, err=True))
        self.train_provider = DataProvider(batchset, options.train_range, options.mini, net.backend,
                                           seed=options.seed, train=True, augment=tuple(options.augment),
                                           balance=options.balance)
        self.test_provider = DataProvider(batchset, options.test_range, options.mini, net.backend,
                                          seed=options.seed, train=False)
        self.log_path = os.path.join(run_dir, "train_log.jsonl")
        self.batches_per_epoch = len(options.train_range)
        self.total_batches = self.batches_per_epoch * options.epochs
        self.started = time.time() - state.seconds
        self.dp = DataParallel(get_world(), net)  # under MPI: shares, sums; rank 0 alone writes files
        self.test_scores = {}    # what the test's per-case scores add to its record: auc, or map and ap
        self.last_cases = 0      # cases of the batch file trained last (the bar's rate)
        self._saved_at = state.batches_done  # batch files done at the last checkpoint (a run without tests)

    # -- state -------------------------------------------------------------------------------------
    def _checkpoint(self, name: str) -> str:
        if not self.dp.is_root:
            return None
        path = os.path.join(self.run_dir, name)
        self.state.seconds = round(time.time() - self.started, 3)
        self.state.conv_algos = dict(sorted(self.net.algos.items()))
        return save_checkpoint(path, self.net.get_arrays(), self.state)

    def _log(self, record: dict):
        if not self.dp.is_root:
            return
        append_log(self.log_path, record)

    # -- loop ---------------------------------------------------------------------------------------
    def run(self) -> int:
        s = self.state
        # Overflow is caught by the NaN/inf check with a message naming the layer; numpy's own warnings
        # would only repeat it, once per array.
        with _Interrupt() as intr, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            while s.epoch <= self.o.epochs:
                epoch = s.epoch
                done_in_epoch = s.batch_in_epoch
                n_batches = self.batches_per_epoch
                bar = TrainProgress(f"epoch {epoch}/{self.o.epochs}", n_batches, enabled=not self.o.quiet,
                                    done=done_in_epoch).__enter__()
                try:
                    for batchnum, minibatches in self.train_provider.iter_epoch(epoch, skip=done_in_epoch):
                        stopped = self._train_batch(epoch, batchnum, minibatches, intr)
                        if stopped:
                            return self._interrupted(epoch, batchnum)
                        s.batch_in_epoch += 1
                        s.batches_done += 1
                        s.batchnum = batchnum
                        s.minibatch = 0
                        bar.add(1, cases=self.last_cases)
                        last_of_epoch = s.batch_in_epoch == n_batches
                        due = (self.o.test_freq and s.batches_done % self.o.test_freq == 0) or (
                            not self.o.test_freq and last_of_epoch)
                        if last_of_epoch:
                            s.epoch += 1
                            s.batch_in_epoch = 0
                        if due or (last_of_epoch and s.epoch > self.o.epochs):
                            bar.close()
                            if self._test_and_save(epoch, batchnum):
                                return 0
                finally:
                    bar.close()
        return 0

    def _train_batch(self, epoch, batchnum, minibatches, intr) -> bool:
        """Train on one batch file; True when interrupted (the state then points inside this batch)."""
        s = self.state
        net = self.net
        start = time.time()
        totals, cases = {}, 0
        skip = s.minibatch
        rates = {}
        for m, mb in enumerate(minibatches):
            if m < skip:
                continue
            if self.dp.stop_requested(intr):
                s.minibatch = m
                return True
            progress = s.batches_done / max(self.total_batches, 1)
            ep = (epoch - 1) + s.batch_in_epoch / max(self.batches_per_epoch, 1)
            rng = net.backend.rng(derive_seed(self.o.seed, epoch, batchnum, m))
            x, labels, rng = self.dp.share(mb, rng)
            costs = net.forward({0: x, 1: labels}, train=True, rng=rng, allreduce=self.dp.allreduce)
            grads = net.backward(grad_scale=self.dp.grad_scale)
            # under MPI one Allreduce: gradients, costs and Ctrl-C flags of all processes
            costs = self.dp.combine(grads, costs, mb.x.shape[0], intr)
            self._check_finite(costs, epoch, batchnum)
            rates = net.update(grads, progress, ep)
            n = mb.x.shape[0]
            cases += n
            _accumulate(totals, costs, n)
        s.minibatch = 0
        self.last_cases = cases
        # this batch counts as done in the record (the state's counter moves on after it returns)
        record = _record("train", epoch, batchnum, s.batches_done + 1, totals, cases, time.time() - start, net,
                         rates, self.batches_per_epoch)
        self._log(record)
        s.history.append({k: record[k] for k in ("type", "epoch", "batch", "progress", "cost", "error")})
        return False

    def _check_finite(self, costs, epoch, batchnum):
        bad = [name for name, (c, _) in costs.items() if not math.isfinite(c)]
        if not bad:
            return
        layer = self.dp.first_nonfinite() or bad[0]
        last = newest_checkpoint(self.run_dir)
        then = (f"the last good checkpoint is {last}; lower epsW/epsB in the params file (or add clip/clipNorm) "
                f"and resume with: convnet train -f {self.run_dir}") if last else (
                "no checkpoint was written yet; lower epsW/epsB in the params file (or add clip/clipNorm) and "
                "start the run again")
        raise NonFiniteError(
            f"the cost went non-finite at epoch {epoch}, batch {batchnum}: layer '{layer}' was the first whose "
            f"output was NaN or inf; {then}")

    def test(self) -> tuple:
        """(totals, cases) over the test range, in test mode: totals {cost layer: {metric: sum over cases}}
        (see _accumulate; _record turns them into means), cases the number of test cases."""
        totals, cases = {}, 0
        scores = best_by.Scores.for_net(self.net, self.state.label_names, kind_of(self.state))
        for _, minibatches in self.test_provider.iter_epoch(0):
            for mb in minibatches:
                x, labels, n = self.dp.test_share(mb)
                costs = self.net.forward({0: x, 1: labels}, train=False)
                if scores is not None and n:
                    scores.add(labels)
                cases += n
                _accumulate(totals, costs, n)
        self.test_scores = self.dp.gather_scores(scores).metrics() if scores is not None else {}
        return self.dp.sum_totals(totals, cases)

    def _save_untested(self, epoch, batchnum) -> bool:
        """A run without a test range: checkpoint (and prune) where a test would be; no best.npz."""
        s = self.state
        path = self._checkpoint(f"{epoch}.{batchnum}.npz")
        if path:
            prune_checkpoints(self.run_dir, self.o.max_checkpoints, written=path)
        since = s.batches_done - self._saved_at
        recs = [h for h in s.history if h["type"] == "train"][-since:] if since > 0 else []
        self._saved_at = s.batches_done
        if not self.o.quiet and recs:
            errors = [h["error"] for h in recs if h["error"] is not None]
            cost = sum(h["cost"] for h in recs) / len(recs)
            err = f" err {sum(errors) / len(errors):.3f}" if errors else ""
            self.echo(f"{epoch}.{batchnum}  cost {cost:.4f}{err}  (no test range)  {time.time() - self.started:.1f}s")
        return False

    def _test_and_save(self, epoch, batchnum) -> bool:
        """Test, log, checkpoint; True when early stopping says stop."""
        if not self.o.test_range:
            return self._save_untested(epoch, batchnum)
        s = self.state
        start = time.time()
        totals, cases = self.test()
        record = _record("test", epoch, batchnum, s.batches_done, totals, cases, time.time() - start, self.net,
                         {}, self.batches_per_epoch)
        record.update({k: v for k, v in self.test_scores.items() if v is not None})
        self._log(record)
        s.history.append({k: record.get(k) for k in ("type", "epoch", "batch", "progress", "cost", "error", "auc")
                          + (("map",) if "map" in record else ())})
        metric = best_by.metric(record, self.o.best_by)
        improved = best_by.improves_record(record, s.best, self.o.best_by)
        if improved:
            s.best = {"metric": metric, "by": self.o.best_by, "epoch": epoch, "batch": batchnum}
            if self.o.best_by == "map":  # a tie in mAP goes to the lower cost (best.improves_record)
                s.best["cost"] = record["cost"]
            s.tests_without_improvement = 0
        else:
            s.tests_without_improvement += 1
        path = self._checkpoint(f"{epoch}.{batchnum}.npz")
        if improved and path:
            copy_atomic(path, os.path.join(self.run_dir, "best.npz"))
        if path:  # None on ranks other than 0 under MPI
            prune_checkpoints(self.run_dir, self.o.max_checkpoints, written=path)
        train = _train_since_last_test(s.history)
        lr = next(iter(self.net_rates().values()), None)
        parts = [f"{epoch}.{batchnum}"]
        if train:
            parts.append(f"cost {train['cost']:.4f}" + (f" err {train['error']:.3f}" if train["error"] is not None else ""))
        parts.append(f"test cost {record['cost']:.4f}" + (f" err {record['error']:.3f}" if record["error"] is not None else "")
                     + (f" auc {record['auc']:.4f}" if record.get("auc") is not None else "")
                     + (f" mAP {record['map']:.4f}" if record.get("map") is not None else ""))
        if lr is not None:
            parts.append(f"lr {lr:.3g}")
        parts.append(f"{time.time() - self.started:.1f}s")
        if improved:
            parts.append("best")
        if not self.o.quiet:
            self.echo("  ".join(parts))
        if self.o.early_stop and s.tests_without_improvement >= self.o.early_stop:
            if not self.o.quiet:
                self.echo(f"early stop: no improvement in {self.o.early_stop} tests")
            s.stopped_early = True
            self._checkpoint(f"{epoch}.{batchnum}.npz")
            return True
        return False

    def net_rates(self) -> dict:
        progress = self.state.batches_done / max(self.total_batches, 1)
        out = {}
        for l in self.net.layers:
            if l.learned and self.net.params[l.name]:
                out[l.name] = self.net.learn[l.name].epsW[0](progress, progress * self.o.epochs)
        return out

    def _interrupted(self, epoch, batchnum) -> int:
        path = self._checkpoint(f"{epoch}.{batchnum}.npz")
        if self.dp.is_root:
            self.echo(f"\ninterrupted: checkpoint written to {path}; resume with: convnet train -f {self.run_dir}")
        return 130


def _accumulate(totals, costs, n):
    for name, (cost, metrics) in costs.items():
        t = totals.setdefault(name, {})
        for k, v in metrics.items():
            if v is not None:
                t[k] = t.get(k, 0.0) + v * n
            else:
                t.setdefault(k, None)


def _record(kind, epoch, batchnum, batches_done, totals, cases, seconds, net, rates, per_epoch) -> dict:
    costs = {name: {k: (v / cases if v is not None and cases else None) for k, v in t.items()}
             for name, t in totals.items()}
    weighted = sum(net.by_name[name].hyper.coeff * c["cost"] for name, c in costs.items() if c.get("cost") is not None)
    first = next(iter(costs.values()), {})
    return {"type": kind, "epoch": epoch, "batch": batchnum,
            "progress": round(batches_done / max(per_epoch, 1), 6), "cases": cases,
            "cost": weighted, "error": first.get("error"), "costs": costs, "seconds": round(seconds, 4),
            "lr": {k: v for k, v in rates.items() if v is not None}}


def _train_since_last_test(history):
    """Mean cost and error of the training batches logged since the test before the latest one."""
    recs = []
    for h in reversed(history[:-1]):
        if h["type"] == "test":
            break
        recs.append(h)
    if not recs:
        return None
    errors = [r["error"] for r in recs if r["error"] is not None]
    return {"cost": sum(r["cost"] for r in recs) / len(recs),
            "error": sum(errors) / len(errors) if errors else None}


# -- entry points -----------------------------------------------------------------------------------
def _load_batchset(path):
    from convnet_cli.data.batch_files import BatchSet

    if not path:
        raise ConfigError("--data-path is required: the folder made by 'convnet make-batches'")
    return BatchSet(path)


NO_TEST_LINE = ("no test range (batches.meta names none, e.g. made with --test-fraction 0, and no --test-range "
                "was given): training without tests; a checkpoint after every epoch (or --test-freq batches), "
                "no best.npz; predict and detect take the run's newest checkpoint")


def _check_ranges(o: TrainOptions, batchset):
    """ConfigError for a range naming batches the folder lacks. An empty test range is a run without tests
    (the CLI refuses an empty --test-range itself, in parse_range)."""
    present = set(batchset.batch_numbers)
    if not o.test_range and o.early_stop:
        raise ConfigError(f"--early-stop {o.early_stop}: stops on tests, and this run has no test range (batches.meta "
                          "names none); give --test-range, or drop --early-stop")
    for flag, rng in (("--train-range", o.train_range), ("--test-range", o.test_range)):
        if not rng:
            if flag == "--test-range":
                continue
            raise ConfigError(f"{flag}: empty range; batches.meta names none and none was given")
        missing = [b for b in rng if b not in present]
        if missing:
            raise ConfigError(f"{flag}: batch {missing[0]} is not in {o.data_path} (it has "
                              f"{min(present)}-{max(present)}); fix the range")


def start(o: TrainOptions, echo=None) -> int:
    """A new run."""
    for flag, v in (("--save-path", o.save_path), ("--layer-def", o.layer_def)):
        if not v:
            raise ConfigError(f"{flag} is required for a new run (or resume one with -f RUN)")
    check_options(o)
    absolute_paths(o)
    batchset = _load_batchset(o.data_path)
    check_labels(batchset, o.data_path)
    o.train_range = o.train_range or list(batchset.train_range)
    o.test_range = o.test_range or list(batchset.test_range)
    _check_ranges(o, batchset)
    world = get_world()
    share_node_cores(world)
    check_same_batches(world, batchset)
    backend = get_backend(rank_device(o.device, world))
    layer_def_text = read_text(o.layer_def, "layer definition")
    params_text = read_text(o.layer_params, "layer params") if o.layer_params else ""
    net = Net.from_text(layer_def_text, params_text, batchset.data_shape, backend, o.seed, o.layer_def,
                        o.layer_params, check=functools.partial(_check_classes, batchset=batchset,
                                                                 source=display_name(o.layer_def)))
    if o.best_by is None:
        o.best_by = best_by.default_best_by(batchset.targets_kind)
    best_by.check_best_by(o.best_by, batchset.label_names, net.layers, batchset.targets_kind)
    copied = init_from(net, o.init_from) if o.init_from else None
    state = _initial_state(o, batchset, layer_def_text, params_text)
    # under MPI: one run directory, made by rank 0
    run_dir = on_root(world, functools.partial(_new_run, o, state, layer_def_text, params_text))
    echo = _rank_echo(echo, world)
    warn = overlap_warning(o.train_range, o.test_range)
    if warn:
        echo(warn)
    if not o.test_range:
        echo(NO_TEST_LINE)
    if not o.quiet:
        echo(f"run directory: {run_dir}")
        echo(f"device {backend.name}; {net.num_params():,} parameters; train batches {_fmt_range(o.train_range)}, "
             f"test batches {_fmt_range(o.test_range)}; {o.epochs} epochs of minibatches of {o.mini}")
        echo(net.describe())
        if world.size > 1:
            echo(f"data-parallel over {world.describe()}: {o.mini} cases per minibatch in all")
        if copied is not None:
            echo(copied.line())
    return _run(o, run_dir, net, batchset, state, echo)


def resume(path: str, explicit: dict, echo=None) -> int:
    """Resume from a run directory (its newest checkpoint) or a checkpoint file; explicit flags override."""
    if explicit.get("init_from"):
        raise ConfigError("--init-from starts a new run from another run's weights; a resume (-f) continues its "
                          "own: drop --init-from, or start a new run with --save-path")
    ckpt = load_checkpoint(resolve_checkpoint(path, prefer_best=False))
    state = ckpt.run_state
    run_dir = os.path.dirname(os.path.abspath(ckpt.path))
    save = explicit.get("save_path")
    if save and os.path.abspath(os.path.expanduser(os.fspath(save))) != os.path.dirname(run_dir):
        raise ConfigError(f"--save-path {save}: a resume writes into its own run directory {run_dir}; drop "
                          f"--save-path (to train on elsewhere, start a new run there with --init-from {run_dir})")
    o = TrainOptions(**{k: v for k, v in state.options.items() if k in TrainOptions.__dataclass_fields__})
    if "layer_def" in explicit and explicit["layer_def"]:
        new_text = read_text(explicit["layer_def"], "layer definition")
        if new_text != state.layer_def:
            raise ConfigError(f"--layer-def cannot change on resume ({explicit['layer_def']} differs from the run's "
                              f"layer definition); start a new run instead")
    # Paths saved by earlier versions may be relative to a folder the run did not record: never the current one.
    o.data_path = saved_path(o.data_path, state.data_path)
    o.layer_params = saved_path(o.layer_params, None)
    for k, v in explicit.items():
        if k != "layer_def":
            setattr(o, k, v)
    check_options(o)
    absolute_paths(o)
    batchset = _load_batchset(o.data_path)
    check_labels(batchset, o.data_path)
    check_batches_fit(state, batchset, ckpt.path)
    _check_ranges(o, batchset)
    world = get_world()
    share_node_cores(world)
    check_same_batches(world, batchset)
    backend = get_backend(rank_device(o.device, world))
    if world.is_root:  # under MPI rank 0 alone touches the run directory
        clean_stale_temps(run_dir)
        cut_log(run_dir, state)
    # The params file is re-read so an edited learning rate takes effect; the run keeps every version.
    params_text, params_name = state.layer_params, state.layer_params_name
    params_src = params_name
    reread = bool(o.layer_params and (os.path.exists(o.layer_params) or "layer_params" in explicit))
    if reread:
        params_text, params_src = read_text(o.layer_params, "layer params"), o.layer_params
    net = Net.from_checkpoint(ckpt, backend, params_text=params_text, params_path=params_src,
                              data_shape=batchset.data_shape, seed=o.seed,
                              check=functools.partial(_check_classes, batchset=batchset,
                                                      source=display_name(state.layer_def_name)))
    if reread:  # kept once the net accepted it
        params_name = on_root(world, lambda: keep_params_version(run_dir, _base_params_name(state), params_text,
                                                                 o.layer_params, state))
    if o.best_by is None:
        o.best_by = best_by.default_best_by(batchset.targets_kind)
    best_by.check_best_by(o.best_by, batchset.label_names, net.layers, batchset.targets_kind)
    # best.npz may hold a better test than the resumed checkpoint knows of (a resume from an earlier
    # checkpoint file): only a test that beats it replaces it
    state.best = best_by.best_of_run(state.best, on_root(world, lambda: read_state(os.path.join(run_dir, "best.npz"))),
                                     o.best_by)
    echo = _rank_echo(echo, world)
    if state.best and state.best.get("by", "error") != o.best_by and not o.quiet:
        echo(f"--best-by {o.best_by}: best.npz was chosen by {state.best.get('by', 'error')} so far; "
             f"the next test starts the new choice")
    state.options = asdict(o)
    state.layer_params, state.layer_params_name = params_text, params_name
    if state.epoch > o.epochs or state.stopped_early and "epochs" not in explicit:
        if not o.quiet:
            echo(f"{ckpt.path}: training already reached epoch {state.epoch - 1} of {o.epochs}; "
                 f"raise --epochs to train on")
        return 0
    state.stopped_early = False
    warn = overlap_warning(o.train_range, o.test_range)
    if warn:
        echo(warn)
    if not o.test_range:
        echo(NO_TEST_LINE)
    if not o.quiet:
        echo(f"resuming {run_dir} at epoch {state.epoch}, batch {state.batch_in_epoch + 1} of the epoch")
    return _run(o, run_dir, net, batchset, state, echo)


def _new_run(o, state, layer_def_text, params_text) -> str:
    """A new run directory holding the layer definition and the params version (rank 0's job under MPI)."""
    run_dir = new_run_dir(o.save_path)
    write_text_atomic(os.path.join(run_dir, state.layer_def_name), layer_def_text)
    if o.layer_params:
        keep_params_version(run_dir, state.layer_params_name, params_text, o.layer_params, state)
    return run_dir


def _rank_echo(echo, world):
    """The summary lines' writer: stderr (or `echo`) on rank 0, nothing on the other ranks."""
    if not world.is_root:
        return lambda msg: None
    return echo or (lambda msg: click.echo(msg, err=True))


def _run(o, run_dir, net, batchset, state, echo) -> int:
    state.options = asdict(o)
    # progress bars on rank 0 only (the options saved are the run's own)
    shown = o if get_world().is_root else replace(o, quiet=True)
    rc = Trainer(shown, run_dir, net, batchset, state, echo).run()
    if rc == 0 and not o.quiet:
        best = state.best
        if best and best.get("metric") is not None:
            echo(f"done: best test {best.get('by', o.best_by)} {best['metric']:.4f} at {best['epoch']}.{best['batch']} "
                 f"(best.npz); checkpoints in {run_dir}")
        elif not o.test_range:
            echo(f"done: no test range, so no best.npz; the newest checkpoint is {newest_checkpoint(run_dir)}")
    return rc


def _check_classes(layers, batchset, source):
    """ConfigError when a cost of the net cannot train on the classes of the data (layers/base.py's
    CostLayer.check_data: the scores must be one per class; a single-label cost refuses multi-label data)."""
    for l in layers:
        if l.is_cost:
            l.check_data(list(batchset.label_names), batchset.targets_kind, source)


def _initial_state(o, batchset, layer_def_text, params_text) -> RunState:
    return RunState(
        options=asdict(o), layer_def=layer_def_text, layer_params=params_text,
        layer_def_name=os.path.basename(o.layer_def),
        layer_params_name=os.path.basename(o.layer_params) if o.layer_params else "params.yaml",
        label_names=list(batchset.label_names),
        multi_label=bool(batchset.multi_label),
        data_shape=list(batchset.data_shape),
        data_mean=[float(v) for v in np.asarray(batchset.data_mean, dtype=np.float32).reshape(-1)],
        data_std=[float(v) for v in np.asarray(batchset.data_std, dtype=np.float32).reshape(-1)],
        features=batchset.features, window=batchset.window, data_path=os.path.abspath(o.data_path),
        rng={"seed": o.seed, "scheme": "derived per (seed, epoch, batch, minibatch)"},
    )


def _base_params_name(state) -> str:
    """The run's first params file name (params.yaml for params.3.yaml): versions are numbered after it."""
    name = state.layer_params_name or "params.yaml"
    stem, ext = os.path.splitext(name)
    head, _, num = stem.rpartition(".")
    return head + ext if head and num.isdigit() else name


def _fmt_range(r):
    if not r:
        return "-"
    if r == list(range(r[0], r[-1] + 1)):
        return f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0])
    return ",".join(str(x) for x in r)
