# small-model-search — the two set-up commands are `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest-xdist workers: one per core, at least 2
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -lt 2 ] && n=2; echo $$n)
# The whole suite: one xdist worker more than cores, as its integration tests spend part of
# their time waiting on the processes they start (2 cores: 95% busy with 3, 84% with 2).
SUITE_WORKERS ?= $(shell echo $$(( $(TEST_WORKERS) + 1 )))

.PHONY: run test test-fast lint format rules bench preview status dashboard exporter clean debs checkov digests digests-check

# The venv is (re)built whenever the pinned requirements change. Its modules are byte-
# compiled up front, on every core (pip would do it on one: half of the build's minutes,
# with torch's CUDA build); never skipped, as where PYTHONDONTWRITEBYTECODE is set every
# process would compile torch anew. A file this Python cannot compile (torch ships
# 3.12-only test helpers) is left as it is, as pip leaves it.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-compile -r requirements-dev.txt
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

venv: $(STAMP)

# checkov in a venv of its own (its dependencies would clash with the product's pins).
CHECKOV := .venv-checkov/bin/checkov
$(CHECKOV):
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet --disable-pip-version-check checkov==3.3.30

# Every overlay scanned: only the findings docs/OPERATING.md lists may remain.
checkov: $(STAMP) $(CHECKOV)
	$(BIN)/python k8s/checkov.py $(CHECKOV)

# Pin every image of k8s/ by digest, resolved from its registry (needs them reachable):
# run after changing a tag or pushing an image of ours. digests-check: exit 1 while one
# is pinned by tag only (docs/OPERATING.md, "Images by digest").
digests: $(STAMP)
	$(BIN)/python k8s/digests.py --write

digests-check: $(STAMP)
	$(BIN)/python k8s/digests.py --check

run: $(STAMP)
	$(BIN)/python -m job run --config configs/quickstart.yaml --workers 2 --fresh

lint: $(STAMP)
	$(BIN)/ruff check job tests bench monitoring k8s
	$(BIN)/ruff format --check job tests bench monitoring k8s
	$(BIN)/mypy job k8s/checkov.py k8s/digests.py k8s/rendering.py
	$(BIN)/hadolint Dockerfile
	$(BIN)/shellcheck entrypoint.sh bench/*.sh

format: $(STAMP)
	$(BIN)/ruff check --fix job tests bench monitoring k8s
	$(BIN)/ruff format job tests bench monitoring k8s

# monitoring/rules.yml is the one source of the alert rules: this writes the Prometheus
# Operator's copy, k8s/components/monitoring/small-model-search-prometheusrule.yaml, from
# it. Run after editing rules.yml; tests/deploy/test_rules_source.py fails until you do.
rules: $(STAMP)
	$(BIN)/python monitoring/render.py

# Debian packages the suite drives for real: a headless Chromium renders report.html;
# promtool checks and unit-tests monitoring/rules.yml and the metrics; a Prometheus and a
# Pushgateway scrape and take pushes; a PgBouncer pools the suite's PostgreSQL
# (job/testing/pgbouncer.py, bench/fleet.py); a container registry (docker-registry, the
# CNCF distribution server) serves the images k8s/digests.py pins. Installed where missing
# (as root, or through sudo); services are started by the tests.
DEBS := chromium prometheus prometheus-pushgateway pgbouncer docker-registry

debs:
	@missing=""; for p in $(DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null \
	  | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "installing$$missing"; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The whole suite, the CI command: lint (after the venv) beside the Debian packages (apt
# waits on the network while pip unpacks torch), then every tier, spread over the cores
# by pytest-xdist one test file per worker at a time (--dist loadfile: a module's
# fixtures start once); the long integration files first, the many short unit files
# last to fill the gaps.
test:
	$(MAKE) --no-print-directory -j2 lint debs $(CHECKOV)
	$(BIN)/python -m pytest -q -n $(SUITE_WORKERS) --dist loadfile tests/integration tests/deploy tests/unit

# The loop to run while editing: the unit tier (in-process, no servers, no sleeps), in
# under a minute on 2 cores.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) tests/unit

bench: $(STAMP)
	$(BIN)/python bench/augment.py
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/research.py
	$(BIN)/python bench/fleet.py

preview: $(STAMP)
	$(BIN)/python -m job augment-preview --config configs/quickstart.yaml --out runs/augment-preview.png

status: $(STAMP)
	$(BIN)/python -m job status --config configs/quickstart.yaml

# The quickstart study (after `make run`) in optuna-dashboard: http://127.0.0.1:8080/
dashboard: $(STAMP)
	$(BIN)/python -m job dashboard --config configs/quickstart.yaml

# Its figures for Prometheus, read at each scrape: http://127.0.0.1:9101/metrics
exporter: $(STAMP)
	$(BIN)/python -m job exporter --config configs/quickstart.yaml

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
