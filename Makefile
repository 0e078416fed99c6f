# make demo: install into .venv, build the digits set, train and evaluate on the CPU.
# make test: install into .venv, lint (ruff check .) and run the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the wheels this project is tested with (on this machine they come from disk)
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install demo demo-scratch test test-all clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

data/digits/.complete: | $(STAMP)
	$(BIN)/python datasets/build_digits.py --out data/digits

data/digits_clean/.complete: | $(STAMP)
	$(BIN)/python datasets/build_digits.py --rendering clean --out data/digits_clean

# The demo (tools/demo.py): labeled-only and a semi-supervised method side by side, one core each, on
# the pretrained digits setting (EfficientNet-Lite0 with Google's ImageNet weights from the installed
# pip package, clean canvases), in the short setting measured in benchmarks/README.md ("The demo").
demo: $(STAMP) data/digits_clean/.complete
	$(BIN)/python tools/demo.py --data data/digits_clean --out runs/demo

# The same comparison for a machine without the pretrained-weights package: ResNet-18 from scratch on
# the default rendering, labeled-only and plain CPS (no gain at this budget: README).
DEMO_SCRATCH_ITERS ?= 600
DEMO_CPS := cps.cutmix=false cps.unsup_start_iter=250 cps.rampup_iters=100

demo-scratch: $(STAMP) data/digits/.complete
	$(BIN)/python tools/train.py configs/digits_sup.yaml work_dir=runs/demo_scratch_sup resume=null train.iters=$(DEMO_SCRATCH_ITERS)
	$(BIN)/python tools/train.py configs/digits_cps.yaml work_dir=runs/demo_scratch_cps resume=null train.iters=$(DEMO_SCRATCH_ITERS) $(DEMO_CPS)
	$(BIN)/python tools/compare.py runs/demo_scratch_sup/metrics.json runs/demo_scratch_cps/metrics.json \
		--names labeled-only CPS --config configs/digits_sup.yaml

# one pytest-xdist worker per core (most slow tests wait on a tool's imports on one core), at most
# 4 (a worker holds torch, models and its own digits set: up to ~1.5 GB); `make test PYTEST_ARGS=` runs them in
# one process.
# make test: every test but the slow ones (`-m slow`: each starts processes, tools, torchrun or
# sweeps, and spends most of its time importing torch in them): ~3 min on 2 cores.
# make test-all: the whole suite, slow ones first (~9 min on 2 cores); CI runs it (.ci/run).
# Both run `ruff check .` first (pyproject.toml's [tool.ruff]): any finding fails them.
PYTEST_ARGS ?= -n auto --maxprocesses 4 --dist load
test: $(STAMP)
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf runs build *.egg-info
