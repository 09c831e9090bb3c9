"""Every test in tests/gpu needs CuPy and an NVIDIA GPU: without them each is skipped with the reason, and
the reason is printed once at the end of the run."""
from __future__ import annotations

import pytest

from tests.gpu.device import REASON


@pytest.fixture(autouse=True)
def _needs_a_gpu():
    if REASON:
        pytest.skip(REASON)


def pytest_terminal_summary(terminalreporter):
    if REASON:
        terminalreporter.write_line(f"tests/gpu skipped: {REASON}")
