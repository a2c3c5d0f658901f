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

.PHONY: lab test notebooks exercises bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e '.[all]'
	touch $@

$(LEARNER): $(STAMP)
	$(BIN)/jupyter labextension disable --level=sys_prefix $(addprefix @jupyter/nbgrader:,$(NBGRADER_LAB))
	$(BIN)/jupyter server extension disable --sys-prefix $(addprefix nbgrader.server_extensions.,$(NBGRADER_SERVER))
	touch $@

lab: $(LEARNER)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/jupyter lab notebooks/ $(LAB_ARGS)

# .venv/bin first on PATH: nbgrader runs `alembic` by name, tests start `bloomlib`, `jupyter`...
test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

notebooks: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(PY) tests/tools/run_notebooks.py notebooks solutions

exercises: $(STAMP)
	$(PY) -m bloomlib.course.grading release

bench: $(STAMP)
	$(BIN)/bloomlib bench core --json

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .bench grading-workdir
	find . -path ./.git -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -prune -exec rm -rf {} +
