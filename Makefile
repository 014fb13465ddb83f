# Bastion — build, run and test.  Every target is idempotent: a second run
# installs nothing and rebuilds nothing that is up to date.
SHELL      := /bin/bash
PYTHON     ?= python3
VENV       := .venv
VPY        := $(VENV)/bin/python
BUILD      := build
BPF_DIR    := $(BUILD)/bpf
CLANG      ?= clang
BPF_CFLAGS := -O2 -g -target bpf -D__TARGET_ARCH_x86 -Wall -Werror \
              -I$(BUILD) -Ibpf/include -Ibpf/lib
BPF_SRCS   := $(wildcard bpf/*.bpf.c)
BPF_OBJS   := $(patsubst bpf/%.bpf.c,$(BPF_DIR)/%.bpf.o,$(BPF_SRCS))
BPF_HDRS   := $(wildcard bpf/include/*.h bpf/lib/*.h)
PYTEST     := $(VPY) -m pytest -p no:cacheprovider

.PHONY: all setup deps venv bpf run test test-unit test-kernel test-e2e test-vm \
        lint bench reset clean

all: setup

setup: deps venv bpf

deps:
	@bash scripts/install-deps.sh

$(VENV)/.installed: pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

venv: deps $(VENV)/.installed

$(BUILD)/vmlinux.h:
	@mkdir -p $(BUILD)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

$(BPF_DIR)/%.bpf.o: bpf/%.bpf.c $(BPF_HDRS) $(BUILD)/vmlinux.h
	@mkdir -p $(BPF_DIR)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

bpf: deps $(BPF_OBJS)

# Start the agent in the foreground with its embedded default policy.
run: setup
	$(VENV)/bin/bastion run

lint: venv
	$(VPY) -m mypy

test-unit: setup
	$(PYTEST) -m unit tests/unit

test-kernel: setup
	$(PYTEST) -m kernel tests/kernel

test-e2e: setup
	$(PYTEST) -m e2e tests/e2e

# The BPF-LSM tier: boots Debian's stock kernel under qemu and runs tests/vm inside.
test-vm: setup
	bash vm/run.sh $(VM_ARGS)

test: setup lint
	$(PYTEST) tests/unit tests/kernel tests/e2e
	bash vm/run.sh

bench: setup
	@for b in bench/bench_*.py; do $(VPY) $$b || exit 1; done

# Break-glass: remove every Bastion pin and program left behind.
reset: venv
	$(VENV)/bin/bastion reset --emergency

clean:
	rm -rf $(BUILD)
