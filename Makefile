# Lastro developer entry points. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: help install run up down status test lint unit integration k8s-tools k8s

help:
	@echo "make run    bring the stack and services up, run the demo, show the status"
	@echo "make test   lint, type-check and run every test against the real stack"
	@echo "make lint   ruff, and mypy --strict over the whole package and the operator"
	@echo "make k8s    the cluster path's tests (real kube-apiserver, Helm, promtool, Tiltfile)"

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
	ruff check services operator tests benchmarks tilt
	ruff format --check services operator tests benchmarks tilt
	mypy --strict services/lastro operator/lastro_operator

# Helm, kube-apiserver & co. built with Go, etcd and promtool from Debian; cached by
# version in ~/.cache/lastro/bin (minutes the first time, a second after).
k8s-tools: install
	lastro dev bootstrap --k8s

# The operator's live test also needs the services (fraud, notifications) of the stack.
k8s: up k8s-tools
	$(PYTHON) -m pytest tests/k8s

unit: install
	$(PYTHON) -m pytest tests/unit

integration: up
	$(PYTHON) -m pytest tests/integration

test: lint up k8s-tools
	$(PYTHON) -m pytest tests
