# rescored-ray: two commands for a newcomer — `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# CPU wheel on machines that carry it locally; set TORCH_SPEC to a CUDA build elsewhere.
TORCH_SPEC ?= torch==2.13.0
DEMO_INPUT ?= examples/chorale.mp3
DEMO_OUT   ?= out/demo

.PHONY: install test test-fast lint format demo clean bench-setup

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: anything that depends on it must find it already installed
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[pipeline,ray,dev]"
	# basic-pitch pins tensorflow<2.15.1 on Python 3.11; we run its bundled ONNX model,
	# and its real runtime dependencies are listed in pyproject.toml
	$(PY) -m pip install --quiet --no-deps basic-pitch==0.4.0
	$(PY) -c "import torch, demucs.apply, basic_pitch, onnxruntime, music21, av, yt_dlp, ray; print('installed: torch', torch.__version__)"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

# The tests that need no Ray (unit tests, the ledger, batch units): a couple of minutes.
test-fast: install
	$(PY) -m pytest -q -m "not ray"

# ruff (lint + format check) over everything, mypy: strict on the pipeline core, checked elsewhere.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The main job end to end through the service: local Ray + Serve, HTTP submission,
# live WebSocket progress, score downloaded, everything stopped again.
demo: install
	$(VENV)/bin/rescored-ray demo $(DEMO_INPUT) -o $(DEMO_OUT) --config configs/demo.yaml
	$(PY) -c "import music21, verovio, sys; s = music21.converter.parse('$(DEMO_OUT)/score.musicxml'); \
	tk = verovio.toolkit(); assert tk.loadFile('$(DEMO_OUT)/score.musicxml'), 'verovio could not load the score'; \
	print('score:', '$(DEMO_OUT)/score.musicxml', '|', len(s.recurse().notes), 'notes/chords,', tk.getPageCount(), 'page(s) in verovio')"

# MuseScore 3, a JDK and MV2H for bench/notation_quality.py (the notation benchmark of issue 13).
bench-setup: install
	bash bench/setup.sh

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
