# The README's quick start: `make book` (environment + the book), then `make test`. .ci/run calls the same targets.
#
#   make book    create .venv (if needed), install torch + the package with every extra, build the book
#   make test    unit tests, every chapter notebook (nbval) and the built site in headless Chromium
#   make env     only the environment;  make lint  ruff;  make clean  remove the built site
#
# torch comes from plain pip by default. On a Linux machine without a GPU, PyTorch's CPU wheel index avoids
# several GB of CUDA libraries (the line PyTorch's install selector gives for "Linux, Pip, CPU"):
#   make book TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Colab and CUDA machines already have a suitable torch; there, `make book` keeps it (TORCH="torch").

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?= -n 2 --dist loadfile

BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
STAMP := $(VENV)/.installed
TORCH_INDEX_ARG := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: env book test lint clean

env: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)" $(TORCH_INDEX_ARG)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -c "import tucker_attention, torch; print('tucker_attention', tucker_attention.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

# Executes every chapter and renders _build/html (open _build/html/index.html). -W: a warning (a broken
# reference, a cell that raised) fails the build. The first build fetches MathJax and the widget JavaScript
# once with npm into book/_vendor/, so the site needs no CDN.
book: $(STAMP)
	$(BIN)/jupyter-book build . -W --keep-going

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check tucker_attention tests bench

clean:
	rm -rf _build
