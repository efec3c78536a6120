# Two entry points (see README.md):  `make demo`  runs the main job,  `make test`  runs the test suite.
# Both create (or reuse) a local virtual environment in .venv and install the package with the
# pinned versions of constraints.txt, so a fresh install never pulls a different torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-slow timm-contract install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) tools/train.py --demo --output runs/demo --overwrite

# The whole suite in two pytest calls: the quick cases first (`make test-fast` alone, what a
# developer runs), then the `slow` ones (real-data training, large variants, multi-process runs).
# Both always run; make fails if either did. Each prints its 25 slowest tests.
PYTEST := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest -q --durations=25

test: $(STAMP)
	status=0; \
	$(PYTEST) -m "not slow" || status=$$?; \
	$(PYTEST) -m slow || status=$$?; \
	exit $$status

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

test-slow: $(STAMP)
	$(PYTEST) -m slow

# timm's own tests/test_models.py (from the installed timm's sdist, bodies unchanged) on our models;
# MODELS='dinat_* biformer_tiny' narrows it (default: every model we register).
timm-contract: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) tests/timm_contract.py --models $(MODELS) -- -q -rf

clean:
	rm -rf $(VENV) runs
