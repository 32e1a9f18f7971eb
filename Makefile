# `make demo`: installs into .venv, packs the built-in faces, trains a progressive GAN, samples.
# `make test`: installs into .venv and runs the whole test suite.
# torch is pinned to the CPU build 2.13.0 here; on a GPU machine install your CUDA torch first
# (or use the Dockerfile) and `pip install -e .`.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

DEMO_DATA := data/demo_faces32
DEMO_CFG  := configs/demo_faces32_pggan.yaml
STACK_DATA := data/demo_faces64
STACK_CFG  := configs/demo_faces64_stackgan.yaml

.PHONY: demo demo-stackgan demo-stylegan2 test install clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(DEMO_DATA)/index.json: | $(STAMP)
	$(BIN)/scalegan pack demo $(DEMO_DATA) --resolution 32

demo: $(STAMP) $(DEMO_DATA)/index.json
	$(BIN)/scalegan train $(DEMO_CFG) $(ARGS)

$(STACK_DATA)/index.json: | $(STAMP)
	$(BIN)/scalegan pack demo $(STACK_DATA) --resolution 64

# StackGAN-v2, three stages 16^2 -> 64^2 on the same faces
demo-stackgan: $(STAMP) $(STACK_DATA)/index.json
	$(BIN)/scalegan train $(STACK_CFG) $(ARGS)

# StyleGAN2 (config F's losses and regularisers, narrowed) at 32^2 on the faces of `make demo`
demo-stylegan2: $(STAMP) $(DEMO_DATA)/index.json
	$(BIN)/scalegan train configs/demo_faces32_stylegan2.yaml $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=30 $(PYTEST_ARGS)

clean-demo:
	rm -rf $(DEMO_DATA) runs/demo_faces32 $(STACK_DATA) runs/demo_faces64_stackgan \
		runs/demo_faces32_stylegan2
