# Two commands: `make lab` (open the lessons) and `make test` (run every test and notebook).
# Both create .venv on first use and reuse it afterwards (reinstalled when pyproject.toml or
# constraints.txt change).
PYTHON ?= python3
VENV ?= .venv
LAB_ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
LEARNER := $(VENV)/.learner-mode
# nbgrader's instructor tools (and the exchange-based assignment lists) are hidden from learners;
# README.md, "For instructors", shows how to turn them back on.
NBGRADER_LAB := formgrader create-assignment assignment-list course-list
NBGRADER_SERVER := formgrader assignment_list course_list
# Every lab of this environment (make lab, make hub's users) takes deploy/lab-overrides.json as its defaults:
# no question about Jupyter news, no update check (it runs offline), and RISE's "white" theme (the default one
# fetches Google Fonts; "white" ships its own, so slides stay offline). deploy/Dockerfile installs the same file.
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json
# Jupyter refuses to start as root without --allow-root; in a container or a cloud VM you often are root.
ROOT_ARGS := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

.PHONY: lab test notebooks exercises bench clean venv screenshots

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e '.[all]'
	touch $@

$(LEARNER): $(STAMP)
	$(BIN)/jupyter labextension disable --level=sys_prefix $(addprefix @jupyter/nbgrader:,$(NBGRADER_LAB))
	$(BIN)/jupyter server extension disable --sys-prefix $(addprefix nbgrader.server_extensions.,$(NBGRADER_SERVER))
	touch $@

$(LAB_OVERRIDES): $(STAMP) deploy/lab-overrides.json
	mkdir -p $(dir $@)
	cp deploy/lab-overrides.json $@

# Opens on lesson 01; the file browser shows the whole course (notebooks/, exercises/).
lab: $(LEARNER) $(LAB_OVERRIDES)
	@$(if $(ROOT_ARGS),echo "make lab: you are root (a container or a VM?): starting JupyterLab with --allow-root")
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" notebooks/01_remember.ipynb $(ROOT_ARGS) $(LAB_ARGS)

# .venv/bin first on PATH: nbgrader runs `alembic` by name, tests start `bloomlib`, `jupyter`...
test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

# The README's pictures, taken by the browser test (Chromium): lesson 01's first screen, a prediction, the explorer.
SHOTS := make_lab_first_screen:lesson01_first_screen lesson_01_remember_prediction_widget:prediction fixture_explorer:explorer
screenshots: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -q -p no:cacheprovider tests/browser/test_browser.py \
		-k "make_lab or explorer_fixture_typed or (lesson_prediction and 01_remember)"
	mkdir -p docs/images
	$(foreach s,$(SHOTS),cp artifacts/browser/$(firstword $(subst :, ,$(s))).png docs/images/$(lastword $(subst :, ,$(s))).png;)

notebooks: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(PY) tests/tools/run_notebooks.py notebooks solutions

exercises: $(STAMP)
	$(PY) -m bloomlib.course.grading release

# The course to present or to read without Jupyter (README.md, "The course as slides and as a website"): HTML from
# the committed notebooks' saved outputs (never re-run) that opens from disk with no network request. reveal.js,
# MathJax and the widgets manager are pinned in site/package-lock.json, installed into site/node_modules.
SITE_JS := site/node_modules/.package-lock.json

$(SITE_JS): site/package.json site/package-lock.json
	npm ci --prefix site --no-audit --no-fund --ignore-scripts
	touch $@

.PHONY: slides site
slides: $(STAMP) $(SITE_JS)
	$(PY) scripts/build_site.py slides --out build/slides

site: $(STAMP) $(SITE_JS)
	$(PY) scripts/build_site.py site --out build/site

bench: $(STAMP)
	$(BIN)/bloomlib bench core --json

# A class on one server (README.md, "Running a class on one server"; deploy/README.md): JupyterHub, its proxy
# (configurable-http-proxy, installed from npm into deploy/node, never globally), NativeAuthenticator, nbgrader.
# All its state (accounts, homes, the nbgrader exchange and course) lives in $(HUB_STATE); it runs offline.
HUB_PORT ?= 8000
HUB_ADMIN ?= teacher
HUB_IP ?= 0.0.0.0
HUB_STATE ?= .hub
PROXY := deploy/node/node_modules/.bin/configurable-http-proxy

$(PROXY): deploy/node/package.json deploy/node/package-lock.json
	npm ci --prefix deploy/node --no-audit --no-fund
	touch $@

.PHONY: hub
hub: $(STAMP) $(PROXY) $(LAB_OVERRIDES)
	@echo "make hub: instructor, sign up as $(HUB_ADMIN) at http://<this machine>:$(HUB_PORT)/hub/signup before the room does;"
	@echo "          approve each learner's sign-up at /hub/authorize. Ctrl-C stops the hub and every server."
	PATH="$(abspath $(BIN)):$$PATH" HUB_STATE="$(abspath $(HUB_STATE))" HUB_IP=$(HUB_IP) HUB_PORT=$(HUB_PORT) \
	  HUB_ADMIN=$(HUB_ADMIN) $(BIN)/jupyterhub -f deploy/jupyterhub_config.py

# tests/test_hub.py starts the hub: `make test` installs the proxy where npm is (without npm the test is skipped),
# and the lab defaults its users get
test: $(if $(shell command -v npm 2>/dev/null),$(PROXY)) $(LAB_OVERRIDES)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .bench grading-workdir
	find . -path ./.git -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -prune -exec rm -rf {} +
