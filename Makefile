# Targets named in README.md. `make test` and `make demo` install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tfversky-installed
DEMO_STAMP := $(VENV)/.tfversky-demo-installed
SOURCES := pyproject.toml setup.py CMakeLists.txt $(shell find csrc -type f)

.PHONY: install demo-install test demo bench clean

install: $(STAMP)

# The editable install also compiles the fused op (CMakeLists.txt): rebuild when C++ changes.
# Its CUDA kernels only where an NVIDIA driver is (TFVERSKY_CUDA=1 builds them anyway, as CI does).
# TFVERSKY_REQUIRE_OP: here a failed op build stops the install (elsewhere the package installs
# without the op, see setup.py).
# $(call install_venv,REQUIREMENTS,CMAKE OPTIONS): the options come before the user's own
# CMAKE_ARGS, which can override them.
define install_venv
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(1)
	CMAKE_ARGS="$(2) $${CMAKE_ARGS:-}" TFVERSKY_REQUIRE_OP=1 $(PY) -m pip install -q --no-build-isolation -e .
	touch $@
endef

$(STAMP): requirements.txt requirements-demo.txt $(SOURCES)
	$(call install_venv,requirements.txt,)

# `make demo` alone installs only what the demo runs (174 s -> 108 s on 2 idle cores:
# benchmarks/RESULTS.md): TensorFlow, the dataset's tools, and the TensorFlow op without the
# pybind11 module and, with no NVIDIA driver, without the XLA lowering (TFVERSKY_XLA=GPU:
# Keras compiles with XLA on a GPU only). After `make install` or `make test`, the demo uses
# the full install.
$(DEMO_STAMP): requirements-demo.txt $(SOURCES)
	$(call install_venv,requirements-demo.txt,-DTFVERSKY_PYBIND=OFF -DTFVERSKY_XLA=GPU)

test: install
	$(PY) -m pytest -q

# The main job: builds the synthetic MS phantom (TFDS, ~1 min), trains, evaluates the test fold.
# `make demo DEMO_ARGS="--dataset ms_lesions/synthetic_lowres --patch-size 32"` runs it on the
# low-resolution phantom in about a quarter of the CPU time, but tests ~6 DSC points lower
# (benchmarks/RESULTS.md, "make demo in under 5 minutes?"), so the full grid stays the default.
# It validates every 4th epoch (and the last): its one validation subject is too little to
# choose an epoch (--select auto keeps the last), so validation only draws the curve, and each
# costs a third of an epoch's training; the model and the test scores are the same.
DEMO_ARGS ?= --val-every 4
demo-install: $(if $(wildcard $(STAMP)),$(STAMP),$(DEMO_STAMP))
demo: demo-install
	$(PY) examples/train_ms.py $(DEMO_ARGS) --out runs/demo

# The fused op against pure TensorFlow (XLA included) and the memory floor: benchmarks/RESULTS.md.
bench: install
	$(PY) benchmarks/bench_loss.py

clean:
	rm -rf build build-gpu *.egg-info tfversky/_lib tfversky/_tfversky_kernels*.so
