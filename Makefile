# The two commands a newcomer needs on a fresh Debian machine:
#   make run    install what is missing, then start the local cluster, its control plane and traffic
#   make test   install what is missing (and a headless Chromium), then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CC ?= cc
# Debian packages the cluster and the tests drive for real, and the compiler for the log and CLIENT LIST scanners.
APT_PACKAGES := haproxy redis-server redis-tools gcc libc6-dev
FASTLOG := collectors/_fastlog.so
CLIENTSCAN := collectors/_clientscan.so
# Only the tests need a browser (the dashboard tests drive headless Chromium through chromedriver),
# and a real Prometheus and Alertmanager (the shipped rules are checked, unit-tested and run live), and
# two standard IRC clients (ii, WeeChat) that the chat must serve as they are.
TEST_APT_PACKAGES := chromium chromium-driver prometheus prometheus-alertmanager ii weechat-headless
# Debian starts these as services on install; the tests run their own, on loopback ports of their choosing.
TEST_SERVICES := prometheus prometheus-alertmanager prometheus-node-exporter

.PHONY: run test deps system-packages test-packages clean dashboards

run: deps
	$(BIN)/chatops up --traffic --controlplane $(ARGS)

test: deps test-packages
	$(BIN)/python -m pytest $(PYTEST_ARGS)

deps: system-packages $(STAMP) $(FASTLOG) $(CLIENTSCAN)

# Grafana dashboards (dashboards/grafana/*.json) and Prometheus rules (dashboards/prometheus/chatops-rules.yml)
# from dashboards/*.py; tests/dashboards/test_generate.py fails when the committed files are stale.
dashboards: deps
	$(BIN)/python -m dashboards.generate

# Installs only what is missing: as root directly, otherwise through sudo, else says what to run.
system-packages:
	@missing=""; \
	for exe in haproxy redis-server redis-cli; do \
	  command -v $$exe >/dev/null 2>&1 || [ -x /usr/sbin/$$exe ] || missing="$$missing $$exe"; \
	done; \
	command -v $(CC) >/dev/null 2>&1 || missing="$$missing $(CC)"; \
	[ -e /usr/include/stdlib.h ] || missing="$$missing libc6-dev"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "make: missing:$$missing; installing $(APT_PACKAGES) python3-venv with apt-get"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; \
	  else echo "make: cannot install packages: not root and no passwordless sudo. Run:" >&2; \
	       echo "  sudo apt-get update && sudo apt-get install -y $(APT_PACKAGES) python3-venv" >&2; exit 1; fi; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $(APT_PACKAGES) python3-venv >/dev/null || \
	  { echo "make: apt-get install failed; install by hand: apt-get install -y $(APT_PACKAGES) python3-venv" >&2; exit 1; }; \
	fi

test-packages:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && \
	command -v promtool >/dev/null 2>&1 && command -v prometheus-alertmanager >/dev/null 2>&1 && \
	command -v ii >/dev/null 2>&1 && command -v weechat-headless >/dev/null 2>&1 || { \
	  echo "make: installing $(TEST_APT_PACKAGES) with apt-get (for the dashboard, alerting and IRC client tests)"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; \
	  else echo "make: cannot install packages: not root and no passwordless sudo. Run:" >&2; \
	       echo "  sudo apt-get update && sudo apt-get install -y $(TEST_APT_PACKAGES)" >&2; exit 1; fi; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $(TEST_APT_PACKAGES) >/dev/null || \
	  { echo "make: apt-get install failed; install by hand: apt-get install -y $(TEST_APT_PACKAGES)" >&2; exit 1; }; \
	  if [ -d /run/systemd/system ]; then $$sudo systemctl disable --now $(TEST_SERVICES) >/dev/null 2>&1 || true; fi; }

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "make: chatops needs Python >= 3.11 ($(PYTHON) is $$($(PYTHON) -V 2>&1))" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# The log collector's compiled scanner (collectors/fastlog.c), loaded with ctypes: no Python headers.
$(FASTLOG): collectors/fastlog.c
	$(CC) -O2 -Wall -shared -fPIC -o $@ $<

# CLIENT LIST counted per source IP in one pass (collectors/clientscan.c), loaded the same way.
$(CLIENTSCAN): collectors/clientscan.c
	$(CC) -O2 -Wall -shared -fPIC -o $@ $<

clean:
	rm -rf $(VENV) .run .pytest_cache $(FASTLOG) $(CLIENTSCAN)
