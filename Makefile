# Two entry points: `make demo` and `make test`. Both set up everything they need on a fresh Debian
# machine: the .venv with Python deps, and the Debian packages the lab runs (openssh-server, nginx)
# and the portal's browser tests drive (chromium, through Playwright; never `playwright install`).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3
DEBIAN_PACKAGES := openssh-server nginx chromium
# No telemetry: this machine has no network beyond package mirrors, and nobody asked for it.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test lint debian-packages clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

debian-packages:
	@missing=""; \
	command -v /usr/sbin/sshd >/dev/null || missing="$$missing openssh-server"; \
	command -v /usr/sbin/nginx >/dev/null || missing="$$missing nginx"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "The lab needs Debian packages:$$missing. Run: sudo apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: $(STAMP) debian-packages
	$(BIN)/upkeep demo $(if $(KEEP),--keep)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The suite runs in TEST_WORKERS processes (pytest-xdist): most of its time is spent waiting on sshd
# nodes, subprocesses and the Prefect server, not on a core, so more workers than cores pay off. Each
# worker has its own labs and Prefect test server (tests/support/fixtures.py). --dist loadfile: a
# module's tests stay in one worker, in file order, as in a serial run (some modules' later tests
# read what earlier ones did to a module or session lab). --no-loadscope-reorder: files are handed
# out in collection order, which tests/conftest.py makes longest first (xdist's own order, by number
# of tests, started the few-but-long files last). Hypothesis runs its "test" profile here (200
# examples a property) and "soak" (5,000) in `make soak`.
# Lint runs beside the tests, not before them (mypy from a fresh clone: ~25 s of one core, while the
# workers are mostly waiting); its output goes to .venv/lint.log, shown at the end, and either
# failing fails the target.
TEST_WORKERS ?= 4
test: $(STAMP) debian-packages
	@$(MAKE) --no-print-directory lint > $(VENV)/lint.log 2>&1 & lint=$$!; \
	status=0; $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder || status=$$?; \
	wait $$lint || { status=1; echo "make lint failed:"; }; cat $(VENV)/lint.log; exit $$status

clean-venv:
	rm -rf $(VENV)

# Benchmarks (bench/README.md): Upkeep vs a bare-SSH floor vs Ansible on the lab (W1-W3, 3 runs
# each; W4: --w4-clusters K all in flight with 60 s upgrades, once), the month's cloud-release plan for
# 10,000 clusters, 10,000 notices through a local SMTP server, a dispatcher tick over 100,000 planned
# updates. Writes bench/results.md. BENCH_ARGS goes to bench/fleet.py, e.g. BENCH_ARGS="--reps 1".
.PHONY: bench
bench: $(STAMP) debian-packages
	@$(BIN)/python -c "import ansible, pyinstrument" 2>/dev/null && test -x $(BIN)/py-spy || \
		$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/all.py $(BENCH_ARGS)

# The long variants: the fault suite's (20 kill -9 points over a 10-cluster x 3-node rollout, 5,000
# Hypothesis examples per entry point), every property test at 5,000 examples (Hypothesis profile
# "soak"; `make test` runs 200) and the end-to-end runs that are soak-only (their skip reason says
# so). docs/reliability.md is regenerated from the fault suite's results, in one process (no xdist:
# the recorder is per process). The table is written even when a case fails (it says which); the
# target then fails too.
SOAK_RESULTS := $(VENV)/faults-results.json
.PHONY: soak
soak: $(STAMP) debian-packages
	rm -f $(SOAK_RESULTS)
	status=0; UPKEEP_SOAK=1 UPKEEP_FAULTS_RESULTS=$(SOAK_RESULTS) $(BIN)/pytest tests/faults -m faults -p no:cacheprovider \
		-p no:xdist --timeout 1800 || status=$$?; \
	UPKEEP_SOAK=1 $(BIN)/pytest tests/unit tests/integration/test_deployments.py -p no:cacheprovider \
		-n $(TEST_WORKERS) --dist loadfile \
		--timeout 1800 || status=$$?; \
	$(BIN)/python -m tests.faults.report $(SOAK_RESULTS) docs/reliability.md && exit $$status

# Line and branch coverage of `make test`'s suite, every Python process included (issue #20's note
# has the figures): coverage.py follows subprocesses and forks ([tool.coverage] in pyproject.toml),
# and the lab's nodes run their agent through tests/support/coverage_node.py. Writes
# .coverage-report/ (index.html, coverage.json) and prints the summary. Slower than `make test`.
.PHONY: coverage
coverage: $(STAMP) debian-packages
	rm -rf .coverage .coverage.* .coverage-report && mkdir -p .coverage-report
	printf '#!/bin/sh\nexec %s %s "$$@"\n' "$(CURDIR)/$(BIN)/python" "$(CURDIR)/tests/support/coverage_node.py" \
		> .coverage-report/node-python && chmod 755 .coverage-report/node-python
	status=0; COVERAGE_FILE=$(CURDIR)/.coverage UPKEEP_LAB_NODE_PYTHON=$(CURDIR)/.coverage-report/node-python \
		$(BIN)/coverage run -m pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder $(PYTEST_ARGS) || status=$$?; \
	$(BIN)/coverage combine -q && $(BIN)/coverage json -q -o .coverage-report/coverage.json && \
	$(BIN)/coverage html -q -d .coverage-report && $(BIN)/coverage report --skip-covered --sort=cover \
		|| { echo "make coverage: no report (see above)"; status=1; }; exit $$status
