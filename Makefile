.DEFAULT_GOAL := help
SHELL := /bin/bash
export PATH := $(HOME)/.local/bin:$(PATH)

help: ## Show the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-12s %s\n", $$1, $$2}'

env: ## Install uv (if missing) and the locked Python environment
	@command -v uv >/dev/null || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
	@uv sync --frozen --quiet

serve: env ## Run the registry: embedded default (SQLite + ./data) on 127.0.0.1:5000
	uv run dtr serve $(ARGS)

test: ## The whole test suite; installs every peer it needs
	scripts/test.sh $(ARGS)

check: lint types ## Static checks only

lint: env ## ruff + import-linter layer contracts
	uv run ruff check dtr tests migrations scripts
	uv run lint-imports --no-cache

types: env ## mypy --strict
	uv run mypy

peers: ## Install the test peers into ~/.cache/dtr/peers
	scripts/install-peers.sh

conformance: env ## Run only the OCI conformance suite (embedded and PostgreSQL + MinIO)
	uv run pytest tests/e2e/test_conformance.py $(ARGS)

bench: env ## Benchmark dtr against distribution v3 and write docs/performance.md
	uv run python scripts/bench.py $(ARGS)

bench-auth: env ## Benchmark dtr with authentication on vs off and write docs/performance.md
	uv run python scripts/bench.py --compare auth $(ARGS)

bench-same: env ## Benchmark dtr against itself (the benchmark's spread) and write docs/performance.md
	uv run python scripts/bench.py --compare same $(ARGS)

bench-audit: env ## Benchmark the audit query API on PostgreSQL with 1M events; docs/performance.md
	uv run python scripts/bench_audit.py $(ARGS)

bench-signing: env ## Measure what the signing gate adds to a tag push and write docs/performance.md
	uv run python scripts/bench_signing.py $(ARGS)

db-upgrade: env ## Upgrade the database schema
	uv run dtr db upgrade

.PHONY: help env serve test check lint types peers conformance bench bench-auth bench-same bench-signing bench-audit db-upgrade
