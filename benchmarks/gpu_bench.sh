#!/usr/bin/env bash
# The bench prepared for one lent GPU machine (configs/bench_gpu.yaml), as one command of at most
# 8 minutes. That machine has PyTorch and transformers preinstalled, no network, no vLLM and no
# math-verify: tppo goes in with --no-deps, and the pure-Python dependencies it still needs come as
# wheels carried beside the checkout (benchmarks/README.md, "The GPU bench").
#   bash benchmarks/gpu_bench.sh WHEELS_DIR OUT_DIR [--dry-run]
set -euo pipefail
wheels=${1:?wheels directory}
out=${2:?output directory}
shift 2
python -m pip install -q --no-index --no-deps "$wheels"/*.whl
python -m pip install -q --no-deps --no-build-isolation -e .
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
tppo bench --config configs/bench_gpu.yaml --output-dir "$out/bench_gpu" --dry-run
if [[ "${1:-}" == "--dry-run" ]]; then exit 0; fi
# The plan's estimate is about 470 s; stop short of the command's limit so what finished comes back.
timeout --signal=INT 500 tppo bench --config configs/bench_gpu.yaml --output-dir "$out/bench_gpu" || echo "bench stopped: rc $?"
# Bring back the report and every run's metrics and config, not the checkpoints.
find "$out/bench_gpu" \( -name '*.safetensors' -o -name '*.pt' -o -name '*.bin' \) -delete
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv > "$out/gpu.csv" 2>/dev/null || true
