#!/usr/bin/env bash
# Run HERE (a machine with PyPI) before bench/gpu_check.sh: fills .gpu/ (git-ignored through
# .git/info/exclude) with what the lent GPU machine lacks. That machine has Python 3.12 with
# torch, numpy, onnxruntime, pyyaml, einops, tqdm and nvidia-ml-py, and no network.
# Carried: Demucs (pure Python) and julius, pydantic (rescored_ray.config), soxr, and Basic
# Pitch's ONNX model file. Ray is not carried: its wheel alone exceeds the 64 MiB a device call
# may carry, so the packing run uses N processes on the one GPU (what N actors at 1/N GPU do).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl
PY=${PY:-.venv/bin/python}
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/whl demucs==4.1.0 julius "pydantic==$($PY -c 'import pydantic; print(pydantic.VERSION)')" \
  "pydantic-core==$($PY -c 'import pydantic_core; print(pydantic_core.__version__)')" \
  annotated-types typing-inspection soxr
cp "$($PY -c 'from rescored_ray.transcription import default_model_path; print(default_model_path())')" .gpu/nmp.onnx
du -sh .gpu; ls .gpu/whl
