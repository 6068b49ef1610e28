#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py), from a bare machine with one NVIDIA GPU:
# installs what is missing (a CUDA build of torch, this package), then runs the
# checks within ~8 minutes and writes the table under $OUT (default ./gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-check}" HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$OUT"
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "installing a CUDA build of torch ..."
  python -m pip install -q "torch>=2.4" || { echo "no CUDA torch and none installable (offline?)"; exit 2; }
fi
python -c "import hyperclone_core, hyperclone_torch" 2>/dev/null || python -m pip install -q -e ".[torch,hf,plot]" \
  || python -m pip install -q --no-deps -e . || true
export PYTHONPATH="$PWD:$PWD/backends${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 480 python benchmarks/gpu_check.py
