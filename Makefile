# Every target creates .venv when it is missing (torch from the machine's local wheels, then hfmm[dev]).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hfmm-installed
export PYTHONHASHSEED := 0

.PHONY: demo demo-neva test test-fast bench lint install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hfmm demo --out demo_output

demo-neva: $(STAMP)
	$(VENV)/bin/hfmm demo --neva --out demo_output

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

bench: $(STAMP)
	$(PY) benchmarks/bench_inference.py
	$(PY) benchmarks/bench_loss.py
	$(PY) benchmarks/bench_convert.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_data.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests convert benchmarks recipes
	$(VENV)/bin/ruff format --check src tests convert benchmarks recipes
