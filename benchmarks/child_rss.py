"""Peak memory of a `convnet` command in a fresh process: the child reports its own high-water mark
(/proc/self/status VmHWM, of the memory map made at exec). The kernel's ru_maxrss of a child would also count
the pages it shared with the parent (a torch-laden benchmark) between fork and exec."""
from __future__ import annotations

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import atexit, sys
def _report():
    with open('/proc/self/status') as f:
        sys.stdout.write(''.join(l for l in f if l.startswith('VmHWM')))
atexit.register(_report)
from convnet_cli.cli import main
main(sys.argv[1:])
"""


def convnet_peak_mb(args, what=None) -> tuple:
    """(peak RSS MiB, wall seconds) of `convnet ARGS` run from this checkout. SystemExit when it fails."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD] + list(args), env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if p.returncode:
        raise SystemExit(f"{what or 'convnet ' + args[0]} exited {p.returncode}: {p.stderr.strip()[-400:]}")
    kb = [int(line.split()[1]) for line in p.stdout.splitlines() if line.startswith("VmHWM")]
    return kb[0] / 1024, time.perf_counter() - t0
