# kdlib: two commands do everything on a fresh machine.
#   make book   execute every notebook (default parameters) and build the HTML book
#   make test   unit tests, ruff, nbval over the committed notebooks, book build from stored outputs
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdlib-installed
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
# The book reads notebooks from this git-ignored folder: executed copies (make book) or the committed ones.
BOOK_NOTEBOOKS := book/notebooks
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: help book test unit lint nbval book-stored data-offline browser clean bench bench-gpu reproduce

help:
	@echo "make book   execute the notebooks and build the HTML book (book/_build/html/index.html)"
	@echo "make test   the whole test-suite (pytest, ruff, nbval, book build with warnings as errors)"
	@echo "make reproduce PROFILE=proxy|cifar100|imagenet [JOBS=N]   the study at full scale (README)"
	@echo "make bench / make bench-gpu   speed of the trainer, side by side with a conventional loop"
	@echo "make clean  build outputs and the notebooks' scratch runs (keeps runs/teachers and runs/reproduce)"

# The virtual environment, created on first use; the stamp makes it idempotent.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Offline real data: Debian's dataset-fashion-mnist, installed where apt-get is usable (as root);
# elsewhere kdlib falls back to torchvision's download.
data-offline:
	@if [ ! -d $(FASHION_MNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing dataset-fashion-mnist (offline Fashion-MNIST)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi

# Headless Chromium for the book's browser test (Debian's chromium and chromium-driver), where apt-get is usable.
browser:
	@if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium and chromium-driver (browser test of the book)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

book: $(STAMP) data-offline
	rm -rf $(BOOK_NOTEBOOKS) && mkdir -p $(BOOK_NOTEBOOKS)
	for nb in $(NOTEBOOKS); do \
		$(PY) -m papermill --cwd notebooks --progress-bar "$$nb" "$(BOOK_NOTEBOOKS)/$$(basename $$nb)"; \
	done
	$(VENV)/bin/jupyter-book build book --all --quiet
	@echo "book: $(CURDIR)/book/_build/html/index.html"

# The book is built first: the unit tests include the browser test of the built site.
test: lint book-stored unit nbval

unit: $(STAMP) data-offline browser
	$(PY) -m pytest tests

lint: $(STAMP)
	$(PY) -m ruff check .

# nbval over the committed notebooks; pytest's exit 5 ("no tests collected") is fine only while there are none.
nbval: $(STAMP) data-offline
	@if [ -z "$(NOTEBOOKS)" ]; then echo "nbval: no notebooks yet"; else \
		$(PY) -m pytest --nbval $(NOTEBOOKS) --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider; fi

# The book from the committed notebooks' stored outputs (no execution), Sphinx warnings as errors.
book-stored: $(STAMP)
	rm -rf $(BOOK_NOTEBOOKS) && mkdir -p $(BOOK_NOTEBOOKS)
	$(if $(NOTEBOOKS),cp $(NOTEBOOKS) $(BOOK_NOTEBOOKS)/)
	$(VENV)/bin/jupyter-book build book --all --quiet --warningiserror --nitpick --keep-going

# Speed, side by side (bench/README.md): the CPU variant here (under 5 minutes, no compilation); the CUDA one
# with the Python that holds torch (PYTHONPATH=.; nothing to install), which appends a row per pair too.
bench: $(STAMP)
	$(PY) bench/bench.py --device cpu

bench-gpu:
	PYTHONPATH=. $(PYTHON) bench/bench.py --device cuda

# The study at full scale: the notebooks executed through papermill with a profile's parameters
# (notebooks/profiles/PROFILE.json: proxy = the CPU study, cifar100 and imagenet need a GPU); executed copies in
# runs/reproduce/PROFILE/, run records in data/results/PROFILE/, then the book from the executed copies. Runs whose
# completed record exists are skipped, so an interrupted call continues; JOBS=N trains N runs side by side.
JOBS ?= 1
reproduce: $(STAMP) data-offline
	@test -n "$(PROFILE)" || { echo "usage: make reproduce PROFILE=proxy|cifar100|imagenet [JOBS=N]"; exit 2; }
	$(PY) -m kdlib.study reproduce --profile $(PROFILE) --jobs $(JOBS)
	rm -rf $(BOOK_NOTEBOOKS) && mkdir -p $(BOOK_NOTEBOOKS)
	cp runs/reproduce/$(PROFILE)/*.ipynb $(BOOK_NOTEBOOKS)/
	$(VENV)/bin/jupyter-book build book --all --quiet

# Build outputs and the notebooks' scratch runs only: downloaded teachers (runs/teachers) and the study's runs
# (runs/reproduce, hours of training, resumable) are never removed by make; delete them by hand if you mean to.
clean:
	rm -rf book/_build $(BOOK_NOTEBOOKS) runs/notebooks
