# Every target creates or refreshes the local virtualenv first, so each is the only command a
# fresh machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOME_DIR := $(abspath .newsletter)
export DAGSTER_HOME ?= $(HOME_DIR)/dagster_home

.PHONY: install demo dev test lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	printf '# embedded demo instance: SQLite storage in this folder\n%s\ntelemetry:\n  enabled: false\n' \
	  "$$(sed -n '/^concurrency:/,/^telemetry:/p' dagster.yaml | sed '$$d')" > $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	NEWSLETTER_DEPLOYMENT=embedded $(PY) -m newsletter_pipelines.demo

# The webhook receiver (port 8780) runs beside Dagster and stops with it; syncs register the
# audiences' webhooks there, so people's actions at the embedded sandbox come back by webhook.
dev: install $(DAGSTER_HOME)/dagster.yaml
	export NEWSLETTER_DEPLOYMENT=embedded; \
	$(PY) -m newsletter_pipelines.webhooks serve --host 127.0.0.1 --port 8780 & receiver=$$!; \
	trap 'kill $$receiver 2>/dev/null' EXIT INT TERM; \
	NEWSLETTER_WEBHOOK_PUBLIC_URL=$${NEWSLETTER_WEBHOOK_PUBLIC_URL:-http://127.0.0.1:8780} \
	$(VENV)/bin/dagster dev -w workspace.yaml

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(PY) benchmarks/bench_eligibility.py
	$(PY) benchmarks/bench_providers.py
	$(PY) benchmarks/bench_full_sync.py
	$(PY) benchmarks/bench_import_back.py
	$(PY) benchmarks/bench_ledger_writes.py
	$(PY) benchmarks/bench_webhooks.py
	$(PY) benchmarks/bench_webhook_latency.py
	$(PY) benchmarks/bench_incremental.py
	$(PY) benchmarks/bench_vs_baselines.py
	$(PY) benchmarks/bench_vs_baselines.py --contacts 1000000 --only project --executor execute_job
	$(PY) benchmarks/bench_provider_limits.py

clean:
	rm -rf .newsletter
