# Lastro developer entry points. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: help install run up down status test lint unit integration

help:
	@echo "make run    bring the stack and services up, run the demo, show the status"
	@echo "make test   lint, type-check and run every test against the real stack"
	@echo "make lint   ruff, and mypy --strict on core and the services"

# Install the package and its dev tools once (re-run when pyproject.toml changes).
.dev/.installed: pyproject.toml
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev]'
	@mkdir -p .dev && touch $@

install: .dev/.installed

up: install
	lastro dev up

run: up
	lastro demo
	lastro dev status

down:
	lastro dev down

status:
	lastro dev status

lint: install
	ruff check services tests benchmarks
	ruff format --check services tests benchmarks
	mypy --strict services/lastro/core services/lastro/accounts services/lastro/identity services/lastro/fraud services/lastro/external

unit: install
	$(PYTHON) -m pytest tests/unit

integration: up
	$(PYTHON) -m pytest tests/integration

test: lint up
	$(PYTHON) -m pytest tests
