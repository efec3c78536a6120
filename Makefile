# Two entry points (see README.md):  `make demo`  runs the main job,  `make test`  runs the test suite.
# Both create (or reuse) a local virtual environment in .venv and install the package with the
# pinned versions of constraints.txt, so a fresh install never pulls a different torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) tools/train.py --demo --output runs/demo --overwrite

test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
