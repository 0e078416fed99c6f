#!/usr/bin/env bash
# The GPU paths in one run (benchmarks/gpu_check.py): every method's published VOC network under
# fp32, bf16 and fp16 on synthetic data; one table. At most ~8 minutes on one GPU.
#   bash benchmarks/gpu_check.sh [--out FILE]     # on a GPU
#   bash benchmarks/gpu_check.sh --dry            # anywhere, tiny sizes (tests/test_speed_options.py runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PYTHON" benchmarks/gpu_check.py "$@"
