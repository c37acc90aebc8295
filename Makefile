# Targets named in README.md. `make test` and `make demo` install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tfversky-installed

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

test: install
	$(PY) -m pytest -q

# The main job: builds the synthetic MS phantom (TFDS, ~2 min), trains, evaluates the test fold.
demo: install
	$(PY) examples/train_ms.py --out runs/demo

clean:
	rm -rf build *.egg-info
