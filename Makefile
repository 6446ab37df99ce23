# pyalived: build, test and demo entry points.  Everything installs itself.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST_ARGS ?=

# The reference peer (keepalived), namespace labs (iproute2, tcpdump, nftables),
# promtool and a Prometheus server, systemd-analyze, and the IPVS VM (qemu,
# Debian's kernel, ipvsadm; busybox-static and kmod for virtme-ng's initramfs).
APT_PKGS := python3 python3-venv python3-pip iproute2 keepalived tcpdump nftables procps \
	psmisc curl prometheus systemd qemu-system-x86 linux-image-amd64 ipvsadm \
	busybox-static kmod time
VNG_VENV ?= .vng
export VNG := $(CURDIR)/$(VNG_VENV)/bin/vng

.PHONY: all deps apt venv vng test lint unit demo demo-lvs bench bench-checkers install clean

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

# virtme-ng boots Debian's kernel under qemu for the IPVS tests; own venv.
$(VNG_VENV)/.installed:
	python3 -m venv $(VNG_VENV)
	$(VNG_VENV)/bin/pip install -q virtme-ng
	touch $@

vng: $(VNG_VENV)/.installed

deps: apt venv vng

lint: venv
	$(VENV)/bin/ruff check pyalived tests bench
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

test: deps lint
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

demo: deps
	$(PY) -m pyalived.demo

# An LVS director pair in the IPVS VM (this host's kernel has none), narrated.
demo-lvs: deps
	$(PY) bench/demo_lvs.py

bench: deps
	$(PY) bench/failover.py

bench-checkers: deps
	$(PY) bench/checkers_scale.py --servers 5000 --duration 30

# Install the package system-wide and the systemd unit (see README, "Running under systemd").
# Debian 12 protects its system Python (PEP 668), so pyalived gets its own venv.
PREFIX_VENV ?= /opt/pyalived
install:
	python3 -m venv $(PREFIX_VENV)
	$(PREFIX_VENV)/bin/pip install -q .
	ln -sf $(PREFIX_VENV)/bin/pyalived /usr/local/sbin/pyalived
	install -m 0644 systemd/pyalived.service /lib/systemd/system/pyalived.service
	[ -e /etc/default/pyalived ] || install -m 0644 systemd/pyalived.default /etc/default/pyalived
	-systemctl daemon-reload

clean:
	rm -rf $(VENV) $(VNG_VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
