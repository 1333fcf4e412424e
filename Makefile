# kdcourse: `make lab` opens the course, `make test` runs every test and every notebook.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kdcourse-installed
# Extra pip options, e.g. PIP_OPTS="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_OPTS ?=
JUPYTER_ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: lab test unit notebooks bench install lock clean-cache help doctor site browser-test workshop-check

help:
	@echo "make lab       - set up .venv if needed and open the course in JupyterLab (http://127.0.0.1:8888)"
	@echo "make test      - set up .venv if needed, run the unit tests and every notebook (fast profile)"
	@echo "make unit      - unit tests only"
	@echo "make bench     - time a reference workload, every notebook and the speed benchmarks against their targets"
	@echo "make notebooks - re-execute every notebook in place (fast profile): refreshes outputs and data/results"
	@echo "make doctor    - check Python, the torch pair, threads, disk, offline data and widgets; one line per check"
	@echo "make site      - render the committed notebooks to HTML in site/ (open site/index.html), links checked"
	@echo "make browser-test - run the notebooks in JupyterLab in headless Chromium and check what shows (NOTEBOOKS=00,05)"
	@echo "make workshop-check - run exactly the 90-minute workshop's core path (WORKSHOP.md) and report its compute time"

install: $(STAMP)

# Re-runs only when pyproject.toml or constraints.txt change: a second `make lab` / `make test` skips it.
# constraints.txt holds the exact, tested versions; pyproject.toml only compatible ranges.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(PIP_OPTS) -c constraints.txt -e ".[dev]"
	$(PY) -c "import kdcourse, torch, torchvision; print('kdcourse', kdcourse.__version__, '| torch', torch.__version__)"
	touch $@

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --no-browser --ip=127.0.0.1 --port=8888 --notebook-dir=notebooks $(JUPYTER_ROOT_FLAG)

# Notebook figures go to a temporary folder under test (see conftest.py); the checkout stays clean.
# TEST_WORKERS pytest-xdist workers (default 2, one per core of a 2-core laptop), each running torch
# with KDCOURSE_THREADS threads (default 1, so workers do not fight over cores). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	env -u KDCOURSE_RESULTS KDCOURSE_PROFILE=fast KDCOURSE_THREADS=$${KDCOURSE_THREADS:-$(if $(filter 0,$(TEST_WORKERS)),2,1)} \
		$(PY) -m pytest tests notebooks --all-notebooks $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

unit: $(STAMP)
	$(PY) -m pytest tests

# The only target that rewrites the committed outputs and data/results/*.json. One torch thread by
# default, as each `make test` worker runs them, so the committed figures are the ones CI reproduces.
notebooks: $(STAMP)
	env -u KDCOURSE_RESULTS KDCOURSE_PROFILE=fast KDCOURSE_THREADS=$${KDCOURSE_THREADS:-1} \
		$(PY) tools/execute_notebooks.py notebooks/*.ipynb

bench: $(STAMP)
	KDCOURSE_PROFILE=fast $(PY) benchmarks/run.py

# Rewrite constraints.txt from the current .venv (after a deliberate upgrade; then run make test).
lock: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^-e '; } > constraints.tmp
	mv constraints.tmp constraints.txt

clean-cache:
	rm -rf data/cache

# No .venv needed: the doctor says what is missing (it runs with .venv's Python when there is one).
doctor:
	@$(if $(wildcard $(PY)),$(PY),$(PYTHON)) tools/doctor.py

# Static HTML of the committed notebooks (outputs as committed, nothing executed, offline) and a
# course-map index; fails naming page and link when an internal link is broken. site/ is not committed.
site: $(STAMP)
	$(PY) tools/build_site.py --notebooks notebooks --out site

# Every notebook (or NOTEBOOKS=00,05) in JupyterLab in headless Chromium, from temporary copies:
# clear, run all, then no error output, figures shown, widgets rendered, sliders drive their output.
# BROWSER_JOBS notebooks at once (tabs; each kernel one torch thread). Installs Debian's chromium
# with apt-get when it is missing and this runs as root. Screenshots: the printed temporary folder.
NOTEBOOKS ?=
BROWSER_JOBS ?= 2
browser-test: $(STAMP)
	env -u KDCOURSE_RESULTS KDCOURSE_THREADS=$${KDCOURSE_THREADS:-1} NOTEBOOKS="$(NOTEBOOKS)" \
		$(PY) tools/browser_test.py --jobs $(BROWSER_JOBS)

# The workshop's core path (WORKSHOP.md's notebooks, cells tagged optional or solution left out),
# fast profile, the laptop's default threads; figures go to a temporary folder. Target: <= 15 min.
workshop-check: $(STAMP)
	env -u KDCOURSE_RESULTS KDCOURSE_PROFILE=fast $(PY) tools/workshop_check.py --target-min 15
