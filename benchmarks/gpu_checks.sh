#!/usr/bin/env bash
# Every GPU check in one run, on a machine with an NVIDIA GPU, CuPy and (for the references) PyTorch:
#
#     [STEPS="tests detect bench"] [BENCH_ARGS="--profile whale-birnn"] bash benchmarks/gpu_checks.sh OUT_DIR
#
# 1. env.txt: the GPU, driver and package versions;
# 2. tests_gpu.log (+ .xml): tests/gpu and the GPU cases of the other test files;
# 3. bench_detect_gpu.log: detect --device gpu on a 6-hour recording, and its net against PyTorch (cuDNN);
# 4. bench_gpu.log: each layer and each network's training step against PyTorch (cuDNN), and the features.
# Wheels of what the machine lacks can wait in .whl/ (soundfile with cffi and pycparser, mpi4py, the mpich
# wheel whose mpiexec the 2-rank GPU test uses): they are installed into /tmp/site first. Each step has its
# own time limit, so that one that hangs leaves the others their time; the logs are written as they go.
set -u
out=${1:?usage: bash benchmarks/gpu_checks.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if compgen -G ".whl/*.whl" >/dev/null; then
    wheels=()
    for w in .whl/*.whl; do case $w in *mpich-*) ;; *) wheels+=("$w") ;; esac; done
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "${wheels[@]}" >"$out/install.log" 2>&1 || echo "wheel install failed (see install.log)"
    export PYTHONPATH=/tmp/site
    for w in .whl/mpich-*.whl; do
        [ -e "$w" ] || continue
        $py -m zipfile -e "$w" /tmp/mpich
        d=$(ls -d /tmp/mpich/mpich-*.data/data)
        chmod +x "$d"/bin/*
        export PATH="$d/bin:$PATH" LD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
    date -u; nvidia-smi; uptime; nproc
    $py - <<'PY'
import importlib
for m in ("numpy", "scipy", "cupy", "torch", "torchaudio", "soundfile", "mpi4py", "yaml", "click"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as exc:
        print(m, "MISSING", type(exc).__name__, exc)
import cupy
print("CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(), "driver", cupy.cuda.runtime.driverGetVersion())
try:
    from cupy.cuda import nccl
    print("NCCL", nccl.get_version())
except Exception as exc:
    print("NCCL MISSING", exc)
PY
    command -v mpiexec
} >"$out/env.txt" 2>&1

steps=" ${STEPS:-tests detect bench} "
if [[ $steps == *" tests "* ]]; then
per_test=()
$py -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 100)
timeout 200 $py -m pytest -q -rs -p no:cacheprovider "${per_test[@]}" --junitxml "$out/tests_gpu.xml" tests/gpu \
    tests/test_ingest_features.py::test_gpu_features_match_cpu >"$out/tests_gpu.log" 2>&1
echo "tests rc=$?" >>"$out/tests_gpu.log"
fi
if [[ $steps == *" detect "* ]]; then
timeout 110 $py benchmarks/bench_detect.py --hours 6 --device gpu --no-rss --threads 8 \
    >"$out/bench_detect_gpu.log" 2>&1
echo "bench_detect rc=$?" >>"$out/bench_detect_gpu.log"
fi
if [[ $steps == *" bench "* ]]; then
timeout 200 $py benchmarks/bench_gpu.py --steps 10 --warmup 3 ${BENCH_ARGS:-} >"$out/bench_gpu.log" 2>&1
echo "bench_gpu rc=$?" >>"$out/bench_gpu.log"
fi
tail -n 3 "$out"/*.log
