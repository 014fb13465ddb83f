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
NATIVE_DIR := $(BUILD)/lib
NATIVE_CFLAGS := -O2 -g -Wall -Wextra -Werror -fPIC -shared -pthread

.PHONY: all setup deps venv bpf native run test test-unit test-kernel test-e2e test-vm \
        test-vm-variant lint bench bench-vm reset clean

all: setup

setup: deps venv bpf native

deps:
	@bash scripts/install-deps.sh

$(VENV)/.installed: pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@$(VPY) -m compileall -q -j 0 $(VENV)/lib >/dev/null
	@touch $@

# Bytecode is compiled here, once: under tamper protection nothing of Bastion's may
# write into its own tree (Bastion never writes .pyc at run time).
venv: deps $(VENV)/.installed
	@$(VPY) -m compileall -q -j 0 src >/dev/null

$(BUILD)/vmlinux.h:
	@mkdir -p $(BUILD)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

$(BPF_DIR)/%.bpf.o: bpf/%.bpf.c $(BPF_HDRS) $(BUILD)/vmlinux.h
	@mkdir -p $(BPF_DIR)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

# the objects are independent: compiled side by side (34 s -> 23 s on 2 cores)
bpf: deps
	@$(MAKE) --no-print-directory -j$$(nproc) $(BPF_OBJS)

# The compiled fast path of the fanotify listener (bastion.kernel.fanotify loads it).
$(NATIVE_DIR)/libbastion_fanloop.so: src/native/fanloop.c
	@mkdir -p $(NATIVE_DIR)
	$(CLANG) $(NATIVE_CFLAGS) $< -o $@

native: deps $(NATIVE_DIR)/libbastion_fanloop.so

# Run Bastion as production runs it: the guardian holding tamper protection with the
# agent under it, in the foreground with the live alert feed (embedded default policy).
# The first run writes a maintenance token and prints the one command that stops it.
run: setup
	$(VENV)/bin/bastion guardian

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

# The same kernel booted without bpf in lsm= (Ubuntu's default list): trampolines but no
# BPF LSM, so compat enforcement with events from the fentry sensor.  A second, short
# boot running tests/vm/variant_nobpflsm.py alone.
VM_VARIANT_LSM := lockdown,capability,landlock,yama,apparmor,tomoyo
test-vm-variant: setup
	VM_LSM=$(VM_VARIANT_LSM) VM_TIMEOUT=300 bash vm/run.sh tests/vm/variant_nobpflsm.py

# Kernel and e2e tests share the host kernel and stay serial.  The VM suite: its files
# split over guests side by side, one per host core, the no-bpf-LSM variant boot after
# (vm/suite.sh).  Unit tests share nothing (no kernel state, own temp dirs): one worker
# beside the guests, which leave about half of each core idle (s26; `make test-unit`
# runs them alone).
test: setup lint
	$(PYTEST) --durations=30 tests/kernel tests/e2e
	VM_VARIANT_LSM=$(VM_VARIANT_LSM) VM_BESIDE="$(PYTEST) -n 1 --durations=30 tests/unit" \
	  bash vm/suite.sh

bench: setup
	@for b in bench/bench_*.py; do $(VPY) $$b || exit 1; done
	@$(MAKE) -s bench-vm

# Issue 16.6 in the VM: the tracepoint sensor against the hook sensor on the same loops
# (bench/vm_sensors.py), and issue 16.5 on the lsm tier: the 1,000-rule HIPS policy
# (bench/vm_hips.py); ratios only (TCG), one boot, when qemu is here; BENCH_VM=0 skips
# it, BENCH_VM_FILES picks the scripts.  On a host shared with other VM users,
# BENCH_VM_LOCK=FILE holds flock(FILE) for the VM run only.  The host's load average is
# printed before and after the boot (the guest cannot see it; TCG timing moves with it).
BENCH_VM_LOCK ?=
BENCH_VM_FILES ?= bench/vm_sensors.py bench/vm_hips.py
bench-vm: setup
	@if [[ $${BENCH_VM:-1} == 0 ]]; then \
	  echo "bench-vm: skipped (BENCH_VM=0)" >&2; \
	elif ! command -v qemu-system-x86_64 >/dev/null; then \
	  echo "bench-vm: skipped: qemu-system-x86_64 not found (make deps)" >&2; \
	else \
	  $(VPY) bench/vm_sensors.py --compile && \
	  $(if $(BENCH_VM_LOCK),flock $(BENCH_VM_LOCK)) env VM_TIMEOUT=$${VM_TIMEOUT:-3600} bash -c \
	    'echo "bench-vm: host load average $$(cut -d" " -f1-3 /proc/loadavg) at $$(date -u +%T) (start)" >&2; \
	     bash vm/run.sh $(BENCH_VM_FILES) -s; rc=$$?; \
	     echo "bench-vm: host load average $$(cut -d" " -f1-3 /proc/loadavg) at $$(date -u +%T) (end)" >&2; \
	     exit $$rc'; \
	fi

# Break-glass: remove every Bastion pin and program left behind.
reset: venv
	$(VENV)/bin/bastion reset --emergency

clean:
	rm -rf $(BUILD)
