# make demo: install into .venv, build the digits set, train and evaluate on the CPU.
# make test: install into .venv and run the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the wheels this project is tested with (on this machine they come from disk)
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

data/digits/.complete: | $(STAMP)
	$(BIN)/python datasets/build_digits.py --out data/digits

# The demo trains both methods on the same 1/16 split for the same, CPU-sized number of iterations.
# CPS runs without CutMix here (CutMix costs ~1.25x more per iteration); its warm-up is scaled down.
DEMO_ITERS ?= 600
DEMO_CPS := cps.cutmix=false cps.unsup_start_iter=250 cps.rampup_iters=100

demo: $(STAMP) data/digits/.complete
	$(BIN)/python tools/train.py configs/digits_sup.yaml work_dir=runs/demo_sup resume=null train.iters=$(DEMO_ITERS)
	$(BIN)/python tools/train.py configs/digits_cps.yaml work_dir=runs/demo_cps resume=null train.iters=$(DEMO_ITERS) $(DEMO_CPS)
	$(BIN)/python tools/eval.py configs/digits_sup.yaml runs/demo_sup/latest.pth --out runs/demo_sup/eval.json
	$(BIN)/python tools/eval.py configs/digits_cps.yaml runs/demo_cps/latest.pth --out runs/demo_cps/eval.json
	$(BIN)/python tools/infer.py configs/digits_sup.yaml runs/demo_sup/latest.pth \
		--input data/digits/ImageSets/Segmentation/val.txt --limit 8 --out runs/demo_sup/predictions
	@echo "== val IoU (%), digits 1/16 labeled, $(DEMO_ITERS) iterations each =="
	$(BIN)/python tools/compare.py runs/demo_sup/eval.json runs/demo_cps/eval.json \
		--names labeled-only CPS --config configs/digits_sup.yaml

# one pytest-xdist worker per core (most slow tests wait on a tool's imports on one core), at most
# 4 (a worker holds torch, models and its own digits set: up to ~1.5 GB); `make test PYTEST_ARGS=` runs them in
# one process
PYTEST_ARGS ?= -n auto --maxprocesses 4 --dist load
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf runs build *.egg-info
