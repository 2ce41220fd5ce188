# Set-up, demo and tests. `make demo` and `make test` work on a fresh machine:
# each creates .venv and installs Ember with its test and GPU extras first.
# torch is pinned: here 2.13.0 resolves to a local CPU build; on a GPU machine
# the same pin pulls the CUDA build from PyPI.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" -e ".[gpu,test,train]"
	touch $(STAMP)

.PHONY: setup demo test lint clean fuzz

setup: $(STAMP)

demo: $(STAMP)
	mkdir -p out
	$(VENV)/bin/ember compile models/transformer.ember --emit opt --dims B=2,T=8 > out/transformer.ir
	@echo "optimized IR: out/transformer.ir ($$(wc -l < out/transformer.ir) lines)"
	$(VENV)/bin/ember compile models/transformer.ember --emit kernels
	$(VENV)/bin/ember compile models/transformer.ember --emit triton -o out/kernels
	$(VENV)/bin/ember run models/transformer.ember --dims B=2,T=8 --backend triton --check \
		--save-params out/gpt.safetensors -o out/gpt.npz
	$(VENV)/bin/ember run models/lstm.ember --entry loss --grad --dims B=4,T=6 --backend triton \
		--check --save-grads out/lstm_grads.safetensors
	$(VENV)/bin/ember compile models/lenet.ember --target sm_90 --dims B=8
	$(VENV)/bin/ember compile models/lenet.ember --entry loss --train-step adamw --emit report \
		--dims B=32
	$(VENV)/bin/ember train models/lenet.ember --data digits --epochs 3 --lr 3e-3 --backend numpy \
		--log out/lenet_metrics.jsonl --plot out/lenet_curves.png --save out/lenet.safetensors

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

# A long fuzz campaign (tests/fuzz/): N mutants of the example models through
# compile, N/10 random models through the oracle, torch and Triton; prints the
# count of each outcome and one minimized reproducer per distinct failure.
N ?= 1000
fuzz: $(STAMP)
	cd tests && nice ../$(PY) -m fuzz.campaign --mutants $(N) --models $$(( $(N) / 10 ))

clean:
	rm -rf $(VENV) out .pytest_cache
