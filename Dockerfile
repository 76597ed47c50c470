# The image every pod of deploy/kuberay/ runs: Ray 2.60 on Python 3.11 with rescored-ray
# installed the way `make install` installs it (torch first, then the project, then
# basic-pitch without its TensorFlow pins). Not built by the project's CI (no container
# daemon there); tests/unit/test_kuberay.py checks that its pins match the Makefile's.
#
#   docker build -t REGISTRY/rescored-ray:0.1.0 .                       # CPU nodes
#   docker build -t REGISTRY/rescored-ray:0.1.0-gpu \
#       --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#       --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" .
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311
FROM ${RAY_IMAGE}

# torch first: anything that depends on it must find it already installed. The CPU wheel
# by default; the GPU build passes a CUDA index (above).
ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
ARG DEMUCS_MODEL=htdemucs

WORKDIR /home/ray/rescored
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users rescored_ray ./rescored_ray
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users jobs ./jobs

# basic-pitch pins tensorflow<2.15.1 on Python 3.11; we run its bundled ONNX model, and its
# real runtime dependencies are listed in pyproject.toml.
RUN pip install --no-cache-dir ${TORCH_SPEC} \
 && pip install --no-cache-dir ".[pipeline,ray]" \
 && pip install --no-cache-dir --no-deps basic-pitch==0.4.0 \
 && python -c "import torch, demucs.apply, basic_pitch, onnxruntime, music21, av, yt_dlp, ray; print('installed: torch', torch.__version__)"

# The Demucs weights in the image, so that a new pod does not download them at start.
RUN python -c "from demucs.pretrained import get_model; get_model('${DEMUCS_MODEL}')"
# librosa's numba kernels compiled once here, by one process (rescored_ray/notation/numba_cache.py).
RUN python -c "from rescored_ray.notation.beats import warm_up; warm_up()"

# Serve's proxy listens on every interface inside a pod (configs/serve.yaml sets no host,
# so a local `rescored-ray serve` stays on 127.0.0.1).
ENV RAY_SERVE_DEFAULT_HTTP_HOST=0.0.0.0
