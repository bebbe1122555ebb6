# ttfnet-lightning developer commands. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export WANDB_MODE ?= offline

.PHONY: help install lint test test-slow train bench clean tables table1 table2 table3 table4 table5 table6 cpu-pretrained modern race race-mini

help:  ## list targets
	@grep -E '^[a-z0-9 -]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-34s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	# torch/torchvision first, pinned: pip takes 2.14.1 / 0.29.1 from this machine's local disk (no
	# silent fallback to another version: a failure here stops the install)
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package editable with [dev]

lint: $(STAMP)  ## ruff on src/, tests/, benchmarks/ and the layer rules (lint-imports)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks  # line length 120, one layout
	$(BIN)/lint-imports  # the layer rules and no import circles (pyproject.toml [tool.importlinter])

test: $(STAMP)  ## run the fast test suite (installs first if needed)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)  ## run only the slow tests
	$(BIN)/python -m pytest -m slow -q

train: $(STAMP)  ## train TTFNet-R18 (fast schedule) on the built-in data
	$(BIN)/python -m ttfnet_lightning.train backbone=r18 schedule=fast

# --- the paper's Tables 1-6 at CPU scale (protocol=cpu, built-in data; see docs/paper.md).
# Each is a resumable Hydra sweep into results/tableN-cpu: rerun after an interruption to continue.
CPU_PRETRAINED := results/cpu-pretrained

$(CPU_PRETRAINED)/%.pth: | $(STAMP)
	$(BIN)/python -m ttfnet_lightning.train experiment=cpu_pretrain backbone=$*

cpu-pretrained: $(CPU_PRETRAINED)/r18.pth  ## pretrain the CPU protocol's ResNet-18 backbone once -> results/cpu-pretrained/r18.pth

table1 table2 table3 table4 table5: $(CPU_PRETRAINED)/r18.pth  ## one paper table at CPU scale -> results/tableN-cpu (resumable)
	$(BIN)/python -m ttfnet_lightning.train experiment=$@ protocol=cpu

table6: $(CPU_PRETRAINED)/r18.pth $(CPU_PRETRAINED)/r34.pth $(CPU_PRETRAINED)/d53.pth  ## Table 6 at CPU scale -> results/table6-cpu (pretrains the R34/D53 CPU backbones first)
	$(BIN)/python -m ttfnet_lightning.train experiment=$@ protocol=cpu

tables: table1 table2 table3 table4 table5 table6  ## every CPU-scale paper table, table1 ... table6 (hours; resumable)

modern: $(STAMP)  ## EMA, cosine, flat-cosine, multi-scale vs the paper's recipe, 3 seeds -> results/modern-cpu (~2 h; resumable)
	$(BIN)/python -m ttfnet_lightning.train experiment=modern

race: $(STAMP)  ## the race: TTFNet, CenterNet and torchvision's detectors, 12 training min each, 2 seeds -> results/race-cpu (~3 h; resumable)
	$(BIN)/python -m ttfnet_lightning.train experiment=race  # then python -m ttfnet_lightning.race results/race-cpu by itself

race-mini: $(STAMP)  ## the race in ~2 minutes (TTFNet vs CenterNet, 18 s each, tiny data) -> multirun/race_mini-cpu
	$(BIN)/python -m ttfnet_lightning.train experiment=race_mini

bench: $(STAMP)  ## run every benchmark (quiet machine!) -> benchmarks/report.md and report.json
	$(BIN)/python benchmarks/report.py

clean:  ## remove .venv, outputs/ and multirun/ (keeps results/)
	rm -rf $(VENV) outputs multirun .pytest_cache  # keeps results/ (measured tables, CPU backbones)
