#!/usr/bin/env bash
# `make test`'s kernel part: the host kernel + e2e suite and the BPF-LSM VM suite side by
# side, then the no-BPF-LSM variant boot.
#
# qemu runs single-threaded TCG (vm/run.sh: multi-threaded TCG hangs on text patching), so
# the VM suite keeps one core busy for its whole run while the host suite, serial by
# design (it shares the host kernel), keeps the other: run one after the other they cost
# the sum (about 690 s + 950 s here), side by side about the longer of the two.  The VM is
# a separate kernel: nothing either suite loads, pins or mounts is seen by the other.
#
#   bash scripts/test-kernel-vm.sh [PYTEST]     PYTEST defaults to .venv's pytest
# Env: TEST_SERIAL=1 runs the three one after the other (for comparison or a busy host);
#      VM_KEEP=DIR as vm/run.sh (the variant's results go to DIR-variant).
# Exit status: 0 only when all three passed.  The VM's output is kept in a log and printed
# after the host suite's (interleaved it would be unreadable), and the last lines are one
# verdict per suite: a CI log keeps its tail.
set -uo pipefail
cd "$(dirname "$0")/.."
VPY=.venv/bin/python
PYTEST=("$VPY" -m pytest -p no:cacheprovider)
[[ $# -gt 0 ]] && PYTEST=("$@")
VARIANT_LSM=${VM_VARIANT_LSM:?the variant boot's lsm= list (the Makefile's VM_VARIANT_LSM)}

die() { echo "test-kernel-vm: error: $*" >&2; exit 2; }
mkdir -p build || die "cannot create build/"
LOGS="$(mktemp -d build/test-logs.XXXXXX)" || die "cannot create a log directory under build/"

# Built once, here: two vm/run.sh at once would both rebuild a stale initramfs.
bash vm/build.sh || die "vm/build.sh failed"

vm_variant() {
  local keep=()
  [[ -n ${VM_KEEP:-} ]] && keep=(VM_KEEP="$VM_KEEP-variant")
  env VM_LSM=$VARIANT_LSM VM_TIMEOUT=300 "${keep[@]}" bash vm/run.sh tests/vm/variant_nobpflsm.py
}

VMPID=""
stop_vm() { [[ -n $VMPID ]] && kill -TERM "$VMPID" 2>/dev/null; true; }
trap stop_vm EXIT
trap 'exit 130' INT TERM

start=$SECONDS
if [[ ${TEST_SERIAL:-0} == 1 ]]; then
  "${PYTEST[@]}" --durations=30 tests/kernel tests/e2e; host_rc=$?
  bash vm/run.sh > "$LOGS/vm.log" 2>&1; vm_rc=$?
else
  # vm/run.sh itself in the background: TERM reaches it and its trap kills qemu.
  bash vm/run.sh > "$LOGS/vm.log" 2>&1 & VMPID=$!
  echo "test-kernel-vm: the VM suite runs in the background (pid $VMPID, log $LOGS/vm.log) while the host suite runs" >&2
  "${PYTEST[@]}" --durations=30 tests/kernel tests/e2e; host_rc=$?
  echo "test-kernel-vm: host suite done after $((SECONDS - start)) s (rc $host_rc); waiting for the VM suite" >&2
fi
# The variant boot after the host suite: it needs a core of its own.
vm_variant; variant_rc=$?
if [[ -n $VMPID ]]; then wait "$VMPID"; vm_rc=$?; VMPID=""; fi

echo "===== VM suite output (Debian's stock kernel, BPF LSM) ====="
cat "$LOGS/vm.log"
echo "===== end of VM suite output ====="
verdict() { if [[ $2 == 0 ]]; then echo "test-kernel-vm: $1: passed"; else echo "test-kernel-vm: $1: FAILED (rc $2)"; fi; }
verdict "host kernel + e2e" "$host_rc"
verdict "VM (BPF LSM)" "$vm_rc"
verdict "VM variant (no BPF LSM)" "$variant_rc"
echo "test-kernel-vm: $((SECONDS - start)) s wall"
rm -rf "$LOGS"
[[ $host_rc == 0 && $vm_rc == 0 && $variant_rc == 0 ]]
