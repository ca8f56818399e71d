# klp.livepatch — one entry point for set-up, tests, the lab and the demo.
# `make test` does all of its own set-up on a fresh Debian 12 machine (as root).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export KLP_CACHE ?= $(HOME)/.cache/klp-livepatch

# Debian packages the builder, the lab and the tests need on the controller.
DEB_PACKAGES := qemu-system-x86 qemu-utils debootstrap e2fsprogs bc bison flex \
	libelf-dev libssl-dev dwarves xz-utils zstd cpio kmod rsync openssh-client \
	gcc-12 make patch git python3-venv

KERNELS ?=
PYTEST_ARGS ?=

.PHONY: help setup deps venv test test-fast test-vm lint sanity units \
	lab-up lab-down lab-status requirements clean

help:
	@echo "make test        set up everything, then run every test tier (fast, then VM)"
	@echo "make test-fast   lint, ansible-test sanity, unit tests (no VMs)"
	@echo "make test-vm     tests against real Debian kernels in lab VMs"
	@echo "make lab-up KERNELS=\"<release> ...\"   boot lab VMs (default: newest 6.1 cloud-amd64)"
	@echo "make lab-status | make lab-down"

setup: deps venv

# Install missing Debian packages only (fast when everything is there).
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "error: run as root (or install: $$missing)" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

requirements:
	$(PYTHON) -m venv /tmp/klp-req-venv && /tmp/klp-req-venv/bin/pip install -q -r requirements.in
	{ echo "# Fully pinned; generated from requirements.in by 'make requirements'."; \
	  /tmp/klp-req-venv/bin/pip freeze; } > requirements.txt

test: setup
	$(MAKE) --no-print-directory test-fast
	$(MAKE) --no-print-directory test-vm

test-fast: setup lint sanity units

lint: setup
	$(BIN)/ruff check .
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint --profile production

sanity: setup
	$(PY) tests/run_sanity.py

units: setup
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

test-vm: setup
	$(BIN)/pytest -q tests/vm $(PYTEST_ARGS)

lab-up: setup
	$(PY) -m lab up $(KERNELS)

lab-down: setup
	$(PY) -m lab down

lab-status: setup
	$(PY) -m lab status

clean:
	rm -rf .sanity tests/output .pytest_cache .ruff_cache
