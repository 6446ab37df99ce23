# pyalived: build, test and demo entry points.  Everything installs itself.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST_ARGS ?=

APT_PKGS := python3 python3-venv python3-pip iproute2 keepalived tcpdump nftables procps psmisc

.PHONY: all deps apt venv test lint unit demo bench clean

all: test

apt:
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

deps: apt venv

lint: venv
	$(VENV)/bin/ruff check pyalived tests bench
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

test: deps lint
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

demo: deps
	$(PY) -m pyalived.demo

bench: deps
	$(PY) bench/failover.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
