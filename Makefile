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
# ipykernel's note on every kernel start (papermill's kernels listen on localhost only): kept out of make's output.
KERNEL_NOTE := Kernel is running over TCP without encryption

.PHONY: help book test unit lint nbval book-stored data-offline browser clean bench bench-gpu bench-clean-tree reproduce \
	book-from-records book-reproduced

help:
	@echo "make book   execute the notebooks and build the HTML book (book/_build/html/index.html)"
	@echo "make test   the whole test-suite (pytest, ruff, nbval, book build with warnings as errors)"
	@echo "make reproduce PROFILE=proxy|proxy_v2|proxy_v3|proxy_v3_resnet56|cifar100|imagenet|smoke [JOBS=N | RUNS_PER_GPU=N] [EXECUTOR=local|submitit-local|slurm]"
	@echo "            the study at full scale (README); make book-from-records PROFILE=P: the book from its records"
	@echo "make bench / make bench-gpu [RECORD=1]   speed of the trainer beside a conventional loop (RECORD=1: for the book)"
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
		$(PY) -m papermill --cwd notebooks --progress-bar "$$nb" "$(BOOK_NOTEBOOKS)/$$(basename $$nb)" 2>&1 \
			| { grep --line-buffered -v "$(KERNEL_NOTE)" || true; }; \
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
# with the Python that holds torch (PYTHONPATH=.; nothing to install). Rows go to the git-ignored
# runs/bench/results.csv, so the tree stays clean; RECORD=1 appends them to the tracked bench/results.csv (the
# book's table) instead, and only from a clean tree, so that every recorded row names a commit that exists.
BENCH_OUT := runs/bench/results.csv
ifeq ($(RECORD),1)
BENCH_OUT := bench/results.csv
endif
bench-clean-tree:
	@if [ "$(RECORD)" = 1 ] && [ -n "$$(git status --porcelain --untracked-files=no)" ]; then \
		echo "make bench RECORD=1 records rows for the book: commit or stash your changes first"; exit 2; fi

bench: $(STAMP) bench-clean-tree
	$(PY) bench/bench.py --device cpu --out $(BENCH_OUT)

bench-gpu: bench-clean-tree
	PYTHONPATH=. $(PYTHON) bench/bench.py --device cuda --out $(BENCH_OUT)

# The study at full scale: the notebooks executed through papermill with a profile's parameters
# (notebooks/profiles/PROFILE.json: proxy = the CPU study, cifar100 and imagenet need a GPU, smoke = the whole
# pipeline in minutes); executed copies in runs/reproduce/PROFILE/, run records in data/results/PROFILE/, then the
# book from the executed copies. Runs whose completed record exists are skipped, so an interrupted call continues;
# JOBS=N trains N runs side by side; RUNS_PER_GPU=N, N runs on each visible GPU (CUDA MPS where it starts; with a
# submitit executor, N runs per job). EXECUTOR=slurm submits the pending runs as a Slurm job array through submitit
# (ARGS="--partition gpu --time-min 600 ..." overrides the profile's 'cluster' object; WAIT=0 returns after the
# submission, without the book); EXECUTOR=submitit-local runs the same jobs on this machine.
JOBS ?= 1
EXECUTOR ?= local
WAIT ?= 1
ARGS ?=
RUNS_PER_GPU ?=
STUDY := $(PY) -m kdlib.study reproduce --profile $(PROFILE)
reproduce: $(STAMP) data-offline
	@test -n "$(PROFILE)" || { echo "usage: make reproduce PROFILE=proxy|proxy_v2|proxy_v3|proxy_v3_resnet56|cifar100|imagenet|smoke [JOBS=N | RUNS_PER_GPU=N] [EXECUTOR=local|submitit-local|slurm]"; exit 2; }
	$(STUDY) $(if $(RUNS_PER_GPU),--runs-per-gpu $(RUNS_PER_GPU),--jobs $(JOBS)) --executor $(EXECUTOR) \
		$(if $(filter 0,$(WAIT)),--no-wait) $(ARGS) 2>&1 \
		| { grep --line-buffered -v "$(KERNEL_NOTE)" || true; }
	$(if $(filter 0,$(WAIT)),@echo "submitted; when the jobs have ended: make reproduce PROFILE=$(PROFILE) EXECUTOR=$(EXECUTOR)",$(MAKE) --no-print-directory book-reproduced)

# The notebooks and the book from the records already made (on a cluster's login node, after the jobs): nothing
# trains, and it stops with an error while a run of the profile has no record.
book-from-records: $(STAMP) data-offline
	@test -n "$(PROFILE)" || { echo "usage: make book-from-records PROFILE=proxy|cifar100|imagenet|smoke"; exit 2; }
	$(STUDY) --records-only 2>&1 | { grep --line-buffered -v "$(KERNEL_NOTE)" || true; }
	$(MAKE) --no-print-directory book-reproduced

book-reproduced:
	rm -rf $(BOOK_NOTEBOOKS) && mkdir -p $(BOOK_NOTEBOOKS)
	# a staged protocol executes no notebook (its pages read its records): the stored notebooks then
	cp $(or $(wildcard runs/reproduce/$(PROFILE)/*.ipynb),$(NOTEBOOKS)) $(BOOK_NOTEBOOKS)/
	$(VENV)/bin/jupyter-book build book --all --quiet
	@echo "book: $(CURDIR)/book/_build/html/index.html"

# Build outputs and the notebooks' scratch runs only: downloaded teachers (runs/teachers) and the study's runs
# (runs/reproduce, hours of training, resumable) are never removed by make; delete them by hand if you mean to.
clean:
	rm -rf book/_build $(BOOK_NOTEBOOKS) runs/notebooks
