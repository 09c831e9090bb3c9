"""Progress bars on stderr (click's), with a rate a user understands: the one place train, make-batches and
detect (and review) draw them.

    with Progress("make-batches", total=1200, unit="clips") as bar:      # 340/1200 clips, 85 clips/s
        bar.add(32)
    with AudioProgress("detect", total_s=6 * 3600) as bar:             # 1.20/6.00 h of audio, 1,900x real time
        bar.add(seconds)

A bar that is not `enabled` (--quiet, a process other than rank 0) does nothing, so callers never branch.
"""
from __future__ import annotations

import sys
import time


class Progress:
    """A bar over `total` things (`unit`: 'clips', 'batches', ...) with their rate per second."""

    def __init__(self, label: str, total: float, unit: str = "", enabled: bool = True, done: float = 0):
        self.label, self.total, self.unit = label, float(total), unit
        self.done = float(done)
        self.t0 = time.perf_counter()
        self._start = float(done)     # what was done before this bar started (a resume): not in the rate
        self._shown = 0
        self.bar = None
        if enabled and total > 0:
            import click

            self.bar = click.progressbar(length=self._ticks(self.total), label=label, file=sys.stderr,
                                         show_pos=False, show_percent=True, show_eta=True, width=28,
                                         item_show_func=self._text)

    # the bar counts integer ticks; a subclass measuring seconds ticks in milliseconds
    def _ticks(self, value: float) -> int:
        return max(1, int(round(value)))

    def _rate(self) -> str:
        el = time.perf_counter() - self.t0
        done = self.done - self._start
        if el <= 0 or done <= 0:
            return f"{self.unit}/s" if self.unit else ""
        return f"{done / el:,.1f} {self.unit}/s" if done / el < 100 else f"{done / el:,.0f} {self.unit}/s"

    def _text(self, _item=None) -> str:
        return f"{self.done:,.0f}/{self.total:,.0f} {self.unit}, {self._rate()}".strip(", ")

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
            self._render()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def add(self, amount: float = 1):
        self.done += amount
        self._render()

    def _render(self):
        if self.bar is None:
            return
        target = min(self._ticks(self.done), self.bar.length) if self.done > 0 else 0
        step = target - self._shown
        if step > 0:
            self._shown = target
            self.bar.update(step)
        else:
            self.bar.render_progress()

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


class TrainProgress(Progress):
    """An epoch's bar over its batch files, with the training rate in cases per second."""

    def __init__(self, label: str, batches: int, enabled: bool = True, done: int = 0):
        self.cases = 0
        super().__init__(label, batches, "batches", enabled, done)

    def add(self, amount: float = 1, cases: int = 0):
        self.cases += int(cases)
        super().add(amount)

    def _text(self, _item=None) -> str:
        el = time.perf_counter() - self.t0
        rate = f", {self.cases / el:,.0f} cases/s" if el > 0 and self.cases else ""
        return f"{self.done:,.0f}/{self.total:,.0f} batches{rate}"


class AudioProgress(Progress):
    """A bar over seconds of audio, shown in hours (minutes below an hour), with the rate as a multiple of
    real time."""

    def __init__(self, label: str, total_s: float, enabled: bool = True):
        super().__init__(label, total_s, "s", enabled)

    def _ticks(self, value: float) -> int:
        return max(1, int(round(value * 1000)))

    def _text(self, _item=None) -> str:
        unit, scale = ("h", 3600.0) if self.total >= 3600 else ("min", 60.0)
        el = time.perf_counter() - self.t0
        rate = f"{self.done / el:,.0f}x real time" if el > 0 and self.done > 0 else "x real time"
        return f"{self.done / scale:.2f}/{self.total / scale:.2f} {unit} of audio, {rate}"


def audio_span(seconds: float) -> str:
    """An amount of audio as people say it: '10.0 s', '12.5 min', '6.00 h'."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
