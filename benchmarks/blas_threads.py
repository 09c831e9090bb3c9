"""The benchmarks' thread count, fixed before numpy (or torch) is imported: BLAS reads it when it loads.

Import this module first: `from blas_threads import THREADS` takes `--threads N` (or `--threads=N`) from the
command line, default 2, and sets the usual variables to it."""
import os
import sys


def threads_from_argv(argv, default=2) -> int:
    """--threads N / --threads=N, read before numpy is imported (its BLAS fixes the count at import)."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return default


THREADS = threads_from_argv(sys.argv[1:])
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = str(THREADS)
