# kdcourse: `make lab` opens the course, `make test` runs every test and every notebook.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kdcourse-installed
# Extra pip options, e.g. PIP_OPTS="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_OPTS ?=
JUPYTER_ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: lab test unit notebooks install clean-cache help

help:
	@echo "make lab    - set up .venv if needed and open the course in JupyterLab (http://127.0.0.1:8888)"
	@echo "make test   - set up .venv if needed, run the unit tests and every notebook (fast profile)"
	@echo "make notebooks - re-execute every notebook in place (fast profile) to refresh committed outputs"

install: $(STAMP)

# Re-runs only when pyproject.toml changes: a second `make lab` / `make test` skips the install.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(PIP_OPTS) -e .
	$(PY) -c "import kdcourse, torch, torchvision; print('kdcourse', kdcourse.__version__, '| torch', torch.__version__)"
	touch $@

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --no-browser --ip=127.0.0.1 --port=8888 --notebook-dir=notebooks $(JUPYTER_ROOT_FLAG)

test: $(STAMP)
	KDCOURSE_PROFILE=fast $(PY) -m pytest tests notebooks --all-notebooks

unit: $(STAMP)
	$(PY) -m pytest tests

notebooks: $(STAMP)
	KDCOURSE_PROFILE=fast $(PY) tools/execute_notebooks.py notebooks/*.ipynb

clean-cache:
	rm -rf data/cache
