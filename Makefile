# Two commands on a fresh machine with Python 3.11+ and make: `make demo`, `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo-appliance

.PHONY: demo test typecheck-tree lint format bench cli-texts clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/flywall-migration demo $(DEMO)
	$(BIN)/flywall-migration --root $(DEMO) migrate
	$(BIN)/flywall-migration --root $(DEMO) status --verbose
	$(BIN)/flywall-migration --root $(DEMO) validate

# The suite runs spread over the machine's cores (pytest-xdist; CI has two), two workers a
# core: about a fifth of a worker's time is spent waiting (fsync, a child process, a local
# server, a racy window), so one a core left both cores idle that long (make test 244 s ->
# 210 s here). TEST_JOBS=0 runs it in this one process, as a plain `python -m pytest` does.
TEST_JOBS ?= $(shell echo $$(( $$(nproc) * 2 )))
# The suite's children load our modules as bytecode, as an installed appliance does (pip
# compiles them): where PYTHONDONTWRITEBYTECODE=1 is set (this machine sets it), each
# exec'd child would compile ~100 modules from source again (~0.1 s of cpu a child). Our
# modules' bytecode goes to __pycache__ beside them (git ignores it), as Python's default;
# the standard library's and the venv's, compiled when they were installed, are used as is.
BYTECODE := env -u PYTHONDONTWRITEBYTECODE
# The suite's scratch files (tmp_path, TMPDIR) go to a RAM file system where the machine has
# one with room (2 GiB free), as /dev/shm here: a test's files live for that test only, and
# what the suite proves of durability it proves with its kill tests and the power-cut VFS,
# never with the kernel's fsync, which there costs only time (make test 176 s -> 142 s here,
# and a fifth less cpu). `make test TEST_TMP=/tmp` runs it on the disk.
TEST_TMP ?= $(shell d=/dev/shm; test -d $$d -a -w $$d && \
	test "$$(df -Pk $$d | awk 'NR == 2 { print $$4 }')" -gt 2097152 2>/dev/null && \
	echo $$d || echo $${TMPDIR:-/tmp})

test: $(STAMP) typecheck-tree
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BYTECODE) TMPDIR=$(TEST_TMP) $(BIN)/python -m pytest -n $(TEST_JOBS) --dist worksteal

# mypy cannot follow the editable install's import hook for pyproject's package-dir
# mapping: give it the `flywall.*` namespace as links to the top-level folders.
typecheck-tree:
	mkdir -p build/typecheck/flywall
	for d in core journal migrations cli api; do ln -sfn ../../../$$d build/typecheck/flywall/$$d; done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Benchmarks against yoyo, alembic and dbmate (bench/run.sh; never part of `make test`).
# Ours is pip-installed (non-editable, as on an appliance) into bench/.work/venv-ours; the
# peers get their own venv and npm prefix under bench/.work/.
# BENCH_QUICK=1 for a smoke run (fewer runs, smaller sizes); other knobs: see bench/run.sh.
bench:
	PYTHON=$(PYTHON) bash bench/run.sh

# The help/version texts `flywall` serves without importing click (cli/_texts.py); a test
# fails until they are regenerated after a change to a command's options or docstring.
cli-texts: $(STAMP)
	$(BIN)/python -m flywall.cli.gentexts

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
