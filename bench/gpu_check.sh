#!/usr/bin/env bash
# The GPU check, one short script for a lent GPU machine (no network there). Prepare HERE first:
#   bash bench/gpu_prepare.sh          # fills .gpu/ with the wheels and the ONNX model it needs
# then, through the device tool (carry .gpu):
#   run(command="bash bench/gpu_check.sh", carry=[".gpu"], timeout_s=540)
# Prints one table at the end (also written to $OUT/gpu_check.txt). Budget: under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 BASIC_PITCH_ONNX="$PWD/.gpu/nmp.onnx"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
OUT_FILE="${OUT:-/tmp}/gpu_check.txt"
timeout 470 python3 bench/gpu_check.py 2>&1 | tee "$OUT_FILE"
