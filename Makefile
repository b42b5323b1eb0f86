# Zoe: `make up` starts the platform on this host, `make test` runs the whole suite.
# Both start whatever the host lacks (venv, Docker engine, RabbitMQ, PostgreSQL) first.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV := .venv

.PHONY: install up down restart test lint bench clean

install:
	deploy/install.sh

up:
	deploy/up.sh

# `make down ARGS=--purge` also removes the deployment's containers; ARGS=--all stops dockerd.
down:
	deploy/down.sh $(ARGS)

# Each service in turn: SIGTERM, wait for the exit, start again, wait for its /readyz.
restart:
	deploy/restart.sh

# Needs the engine, broker and database (install starts them), not a running platform.
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy common services
	$(VENV)/bin/pytest -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy common services

# Each tests/bench/*.py prints its results as JSON; a copy goes to var/bench/.
bench: install
	@mkdir -p var/bench
	@shopt -s nullglob; benches=(tests/bench/*.py); \
	if (( $${#benches[@]} == 0 )); then echo "no benchmarks in tests/bench/"; fi; \
	for bench in "$${benches[@]}"; do \
		case "$$(basename "$$bench")" in _*) continue;; esac; \
		echo "==> $$bench"; \
		$(VENV)/bin/python "$$bench" --json | tee "var/bench/$$(basename "$$bench" .py).json"; \
	done

clean:
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache .mypy_cache .hypothesis build var/bench
