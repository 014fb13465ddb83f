#!/usr/bin/env bash
# The VM suite as `make test` runs it: the files of tests/vm split over VM_SHARDS guests
# booted side by side, then the no-bpf-LSM variant boot in the shard that finishes
# first.  A single-threaded TCG guest (multi-threaded TCG hangs: docs/testing-vm.md)
# uses at most one host core, and about half of one on average: one guest left most of
# the host idle for the half hour the suite took.
#
#   bash vm/suite.sh
#
# Env:  VM_SHARDS=N     guests side by side (default: one per host core, as many as the
#                       available memory holds at VM_MEM + 1 GiB each, at most 4)
#       VM_KEEP=DIR     each guest's results share is kept in DIR/shard-K (and
#                       DIR/variant)
#       VM_VARIANT_LSM  the lsm= list of the variant boot (the Makefile sets it)
#       VM_BESIDE=CMD   a host command run beside the guests (the Makefile: the unit
#                       tests, on the cores the guests leave idle); its output is
#                       printed whole at its end and its failure fails the suite
#       every other VM_* variable as vm/run.sh takes it
# Files are assigned longest first to the least loaded guest by their seconds in
# vm/weights.txt (a file not listed counts 60 s); `bash vm/suite.sh --weights DIR...`
# prints the weights measured in kept results (DIR/shard-*/junit.xml) instead.
# Exit status: 0 only when every guest's run passed.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$REPO"
die() { echo "vm/suite.sh: $*" >&2; exit 2; }

if [[ ${1:-} == --weights ]]; then
  shift
  (($#)) || die "--weights needs the VM_KEEP directories of a run"
  exec "$REPO/.venv/bin/python" - "$@" <<'PY'
import sys, xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
tot: dict[str, float] = defaultdict(float)
for d in sys.argv[1:]:
    for j in sorted(Path(d).glob("shard-*/junit.xml")):
        for tc in ET.parse(j).iter("testcase"):
            f = (tc.get("classname") or "").replace(".", "/") + ".py"
            tot[f] += float(tc.get("time") or 0)
for f, s in sorted(tot.items(), key=lambda kv: -kv[1]):
    print(f"{f} {s:.0f}")
PY
fi
(($# == 0)) || die "takes no arguments (pytest arguments: bash vm/run.sh ARGS)"

VM_MEM="${VM_MEM:-3072}"
[[ $VM_MEM =~ ^[0-9]+$ ]] || die "VM_MEM must be MiB, got '$VM_MEM'"
if [[ -n ${VM_SHARDS:-} ]]; then
  [[ $VM_SHARDS =~ ^[1-9][0-9]*$ ]] || die "VM_SHARDS must be a positive number, got '$VM_SHARDS'"
  shards=$VM_SHARDS
else
  avail_mb=$(( $(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo) / 1024 ))
  # one per core, as measured (s25: 1,154 s for the suite against 1,879 s in one guest).
  # A guest keeps its core busy only about half the time (each of two used 11.5 min of
  # CPU in 22.5 min); VM_SHARDS=4 measured no gain (895 s against 916 s) and six
  # contention failures: the idle half takes the unit tests instead (VM_BESIDE)
  shards=$(nproc)
  by_mem=$(( avail_mb / (VM_MEM + 1024) ))
  (( by_mem < shards )) && shards=$by_mem
  (( shards > 4 )) && shards=4
  (( shards < 1 )) && shards=1
fi

# Built once, before the guests start (each run.sh then finds it up to date).
bash "$REPO/vm/build.sh"

declare -A weight=()
while read -r f s _; do
  [[ -z $f || $f == \#* ]] && continue
  weight[$f]=$s
done < "$REPO/vm/weights.txt"
files=()
for f in tests/vm/test_*.py; do files+=("$f"); done
((${#files[@]})) || die "no tests/vm/test_*.py"
# a guest with no file would run the whole of tests/vm (run.sh's default)
(( shards > ${#files[@]} )) && shards=${#files[@]}
# longest first, each to the least loaded shard
mapfile -t order < <(for f in "${files[@]}"; do echo "${weight[$f]:-60} $f"; done | sort -k1,1nr -k2)
load=() assigned=()
for ((k = 0; k < shards; k++)); do load[k]=0; assigned[k]=""; done
for line in "${order[@]}"; do
  w=${line%% *} f=${line#* }
  best=0
  for ((k = 1; k < shards; k++)); do (( load[k] < load[best] )) && best=$k; done
  load[best]=$(( load[best] + w ))
  assigned[best]+="$f "
done

logs="$(mktemp -d "${TMPDIR:-/tmp}/bastion-vmsuite.XXXXXX")"
pids=() ticker=""
cleanup() {
  [[ -n $ticker ]] && kill -TERM "$ticker" 2>/dev/null
  # each shard is a process group of its own (set -m below): its run.sh and qemu too
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$logs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
set -m   # a process group per background job: cleanup reaches the guests, not the shells alone

variant_claim="$logs/variant.claim"
shard() {   # K FILES...: the guest's run, then the variant boot if no other shard took it
  local k=$1 rc=0
  shift
  VM_KEEP="${VM_KEEP:+$VM_KEEP/shard-$k}" bash "$REPO/vm/run.sh" "$@" || rc=$?
  if [[ -n ${VM_VARIANT_LSM:-} ]] && mkdir "$variant_claim" 2>/dev/null; then
    echo "vm/suite.sh: shard $k runs the variant boot (lsm=$VM_VARIANT_LSM)"
    VM_LSM="$VM_VARIANT_LSM" VM_TIMEOUT=300 VM_KEEP="${VM_KEEP:+$VM_KEEP/variant}" \
      bash "$REPO/vm/run.sh" tests/vm/variant_nobpflsm.py || rc=1
  fi
  return "$rc"
}

echo "vm/suite.sh: ${#files[@]} files in $shards guests side by side" >&2
[[ -n ${VM_VARIANT_LSM:-} ]] ||
  echo "vm/suite.sh: no variant boot (VM_VARIANT_LSM is unset; make test sets it)" >&2
for ((k = 0; k < shards; k++)); do
  # shellcheck disable=SC2086  # the file list: paths from the glob above, no spaces
  echo "vm/suite.sh: shard $k (~${load[k]} s by vm/weights.txt): ${assigned[k]}" >&2
  # shellcheck disable=SC2086
  shard "$k" ${assigned[k]} > "$logs/shard-$k.log" 2>&1 &
  pids+=($!)
done
# progress while the guests run (their consoles are printed whole at their ends)
( while sleep 120; do
    for ((k = 0; k < shards; k++)); do
      last="$(grep -a -o '^tests/vm/[^ ]*' "$logs/shard-$k.log" 2>/dev/null | tail -n 1)"
      echo "vm/suite.sh: shard $k at ${last:-boot}" >&2
    done
  done ) &
ticker=$!
fail=0
beside=""
if [[ -n ${VM_BESIDE:-} ]]; then
  echo "vm/suite.sh: beside the guests: $VM_BESIDE" >&2
  bash -c "$VM_BESIDE" > "$logs/beside.log" 2>&1 &
  beside=$!
  pids+=("$beside")
  rc=0
  wait "$beside" || rc=$?
  echo "=================== vm/suite.sh: beside the guests (exit $rc) ==================="
  cat "$logs/beside.log"
  ((rc == 0)) || fail=1
fi
for ((k = 0; k < shards; k++)); do
  rc=0
  wait "${pids[k]}" || rc=$?
  echo "=================== vm/suite.sh: shard $k (exit $rc) ==================="
  cat "$logs/shard-$k.log"
  ((rc == 0)) || fail=1
done
pids=()
kill -TERM "$ticker" 2>/dev/null || true
ticker=""
if ((fail)); then
  echo "vm/suite.sh: FAIL: a shard${beside:+ or the command beside them} failed (its output above)" >&2
  exit 1
fi
echo "vm/suite.sh: every shard${beside:+ and the command beside them} passed" >&2
