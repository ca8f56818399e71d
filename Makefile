# SPDX-License-Identifier: GPL-3.0-or-later
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
#   lab:      qemu-system-x86 qemu-utils debootstrap e2fsprogs cpio rsync openssh-client
#   builder:  gcc-12 libc6-dev make bc bison flex libelf-dev libssl-dev openssl dwarves
#             kmod patch xz-utils zstd  (kernel module builds, signing, unpacking)
#   gates:    git python3-venv ca-certificates shellcheck  (venv, pip, ansible-test)
DEB_PACKAGES := qemu-system-x86 qemu-utils debootstrap e2fsprogs cpio rsync openssh-client \
	gcc-12 libc6-dev make bc bison flex libelf-dev libssl-dev openssl dwarves \
	kmod patch xz-utils zstd \
	git python3-venv ca-certificates shellcheck chromium

KERNELS ?=
PYTEST_ARGS ?= -q

# pytest exits 5 when it collects no test. That is accepted only while a tier has
# no test files at all (said loudly); once it has some, collecting none fails.
define pytest_tier
	@if [ -z "$$(find $(1) -name 'test_*.py' -print -quit 2>/dev/null)" ]; then \
		echo "NOTICE: $(1) has no test files yet; tier skipped, 0 tests run"; \
	else \
		$(BIN)/pytest $(1) $(PYTEST_ARGS) $(2); \
	fi
endef

.PHONY: help setup deps venv test test-fast test-vm sanity units \
	lint lint-python lint-yaml lint-ansible lint-changelog \
	lab-up lab-down lab-status demo requirements clean

help:
	@echo "make test        set up everything, then run every test tier (fast, then VM)"
	@echo "make test-fast   lint, changelog lint, ansible-test sanity, unit tests (no VMs)"
	@echo "make test-vm     tests against real Debian kernels in lab VMs"
	@echo "make lint | sanity | units   one part of the fast tier (make -k: run all gates)"
	@echo "make lab-up KERNELS=\"<release> ...\"   boot lab VMs (default: newest 6.1 cloud-amd64)"
	@echo "make lab-status | make lab-down"
	@echo "make demo        boot a lab VM and live-patch it with livepatch.yml (examples/demo.sh)"

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
	rm -rf /tmp/klp-req-venv
	$(PYTHON) -m venv /tmp/klp-req-venv && /tmp/klp-req-venv/bin/pip install -q -r requirements.in
	{ echo "# SPDX-License-Identifier: GPL-3.0-or-later"; \
	  echo "# Fully pinned; generated from requirements.in by 'make requirements'."; \
	  /tmp/klp-req-venv/bin/pip freeze; } > requirements.txt

test: setup
	$(MAKE) --no-print-directory test-fast
	$(MAKE) --no-print-directory test-vm

test-fast: setup lint sanity units

lint: lint-python lint-yaml lint-ansible lint-changelog

lint-python: setup
	$(BIN)/ruff check .

lint-yaml: setup
	$(BIN)/yamllint -s .

# ansible-lint resolves klp.livepatch.* (roles, modules, filters at play keywords) through
# a collection path: this checkout, linked, never an installed copy that may be older.
LINT_COLLECTIONS := $(VENV)/lint-collections
lint-ansible: setup
	mkdir -p $(LINT_COLLECTIONS)/ansible_collections/klp
	ln -sfn $(CURDIR) $(LINT_COLLECTIONS)/ansible_collections/klp/livepatch
	ANSIBLE_COLLECTIONS_PATH=$(LINT_COLLECTIONS) $(BIN)/ansible-lint --profile production $(if $(CI),--nocolor)

lint-changelog: setup
	$(BIN)/antsibull-changelog lint

sanity: setup
	$(PY) tests/run_sanity.py

units: setup
	$(call pytest_tier,tests/unit)

# The VM tier runs as VM_WORKERS pytest-xdist workers, each with a lab of its own
# (.lab/gw0, .lab/gw1: its own VMs and ports), one test module at a time, slowest modules
# first: a TCG guest keeps one core busy while the controller mostly waits on it.
# VM_WORKERS=0 runs the tier in one process. The slowest tests are listed at the end.
VM_WORKERS ?= 2
test-vm: setup
	$(call pytest_tier,tests/vm,-n $(VM_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15)

lab-up: setup
	$(PY) -m lab up $(KERNELS)

lab-down: setup
	$(PY) -m lab down

lab-status: setup
	$(PY) -m lab status

# Boot the default lab VM and live-patch it; a rerun reuses the VM and the build.
demo: setup
	examples/demo.sh

clean:
	rm -rf .sanity tests/output .pytest_cache .ruff_cache
