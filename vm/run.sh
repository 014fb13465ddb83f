#!/usr/bin/env bash
# Runs the `vm`-marked tests (tests/vm) inside Debian's stock kernel under qemu TCG.
#
#   bash vm/run.sh [PYTEST ARGS...]      e.g.  bash vm/run.sh -k lsm -x
#                                              bash vm/run.sh tests/vm/test_vm_smoke.py -v
#
# Env:  VM_TIMEOUT=2400  hard limit in seconds for boot + suite; qemu is killed
#                        and the run FAILS when it is reached
#       VM_MEM=3072 VM_SMP=2
#       VM_ACCEL=tcg,thread=single  VM_CPU=max   qemu's -accel and -cpu.  Not multi:
#                        qemu 7.2's multi-threaded TCG can leave a vCPU re-running a stale
#                        int3 after the kernel patches its text (both vCPUs hang; the
#                        "guest soft lockup" of docs/testing-vm.md); VM_ACCEL=tcg,thread=multi
#                        brings it back, for comparison
#       VM_GDB=PORT      qemu's gdb stub on 127.0.0.1:PORT (debugging a hung guest; with
#                        VM_APPEND="nokaslr softlockup_panic=0" the guest stays hung to look at)
#       VM_DEBUG=1       kernel boot messages and `set -x` in the guest /init
#       VM_LSM=LIST      boot with lsm=LIST, e.g. VM_LSM=lockdown,capability,landlock,yama,apparmor
#                        (no bpf: the Ubuntu-like variant, trampolines without BPF LSM;
#                        run tests/vm/variant_nobpflsm.py there)
#       VM_APPEND=ARGS   extra guest kernel parameters (debugging: "loglevel=7")
#       VM_SHELL=1       interactive shell in the guest after pytest (needs a tty;
#                        no timeout then)
#       VM_KEEP=DIR      copy the results share (junit.xml, dmesg.txt, ...) to DIR
#       CI               propagated into the guest unchanged
# Exit status: 0 only when the guest wrote exit code 0 and the JUnit report shows
# at least one test and no failures/errors.  See docs/testing-vm.md.
set -euo pipefail

die() { echo "vm/run.sh: error: $*" >&2; exit 2; }

# The physical path of the checkout, exactly (a command substitution would
# drop a trailing newline of the name; the "." sentinel keeps it).
src="${BASH_SOURCE[0]}"
if [[ $src == */* ]]; then src="${src%/*}"; else src=.; fi
REPO="$(cd -- "$src/.." && pwd -P && echo .)"
REPO="${REPO%$'\n.'}"
cd "$REPO"
VM_TIMEOUT="${VM_TIMEOUT:-2400}"   # single-threaded TCG: the whole suite 942 s in s23; a slower host (s24: the first sixth took ~10 min) keeps its margin
VM_MEM="${VM_MEM:-3072}"
VM_SMP="${VM_SMP:-2}"
VM_ACCEL="${VM_ACCEL:-tcg,thread=single}"
VM_CPU="${VM_CPU:-qemu64}"
[[ $VM_TIMEOUT =~ ^[0-9]+$ && $VM_TIMEOUT -gt 0 ]] || die "VM_TIMEOUT must be a positive number of seconds, got '$VM_TIMEOUT'"
[[ $VM_ACCEL =~ ^[a-z0-9_=,.-]+$ ]] || die "VM_ACCEL='$VM_ACCEL' must be a qemu -accel value (e.g. tcg,thread=multi)"
[[ $VM_CPU =~ ^[A-Za-z0-9_=,.+-]+$ ]] || die "VM_CPU='$VM_CPU' must be a qemu -cpu value (e.g. max,-x2apic)"
[[ -z ${VM_GDB:-} || $VM_GDB =~ ^[0-9]+$ ]] || die "VM_GDB='$VM_GDB' must be a TCP port number"

# The checkout goes to the guest as its own read-only 9p share (tag repo),
# mounted at the same path after the guest's own /tmp /var/tmp /run /dev/shm, so
# a checkout anywhere works (e.g. `git clone` into a temp dir under /tmp).  Its
# path travels in the results share, never on the kernel command line or in a
# mount option: blanks, quotes and commas are fine (qemu's option syntax gets
# commas doubled).  Refused: control characters (the guest reads the path as one
# line), ':' (PATH), a checkout where the guest has its own kernel file systems,
# and one that would hide a directory the guest replaces.
qrepo="$(printf '%q' "$REPO")"
case $REPO in
  *[[:cntrl:]]*)
    die "the checkout path $qrepo contains a control character (newline, tab, ...); the guest cannot be given it — clone to a path without one" ;;
  *:*)
    die "the checkout path $qrepo contains ':', which cannot go on PATH (the guest puts the checkout's .venv/bin first on PATH) — clone to a path without one" ;;
  /dev/shm/*) ;;
  /proc/*|/sys/*|/dev/*)
    die "the checkout $qrepo is under /proc, /sys or /dev, which the guest mounts afresh; put it elsewhere" ;;
  /run/vm|/run/vm/*|/run/vm-results|/run/vm-results/*)
    die "the checkout $qrepo is under /run/vm or /run/vm-results, which the guest's /init uses; put it elsewhere" ;;
esac
[[ $REPO != / ]] || die "the checkout is /; put it in a subdirectory"
for d in /tmp /var/tmp /run /dev/shm /proc /sys /dev; do
  [[ $d/ != "$REPO"/* ]] \
    || die "the checkout $qrepo is $d or contains it; mounted in the guest it would hide the guest's own $d — put it in a subdirectory"
done
VPY="$REPO/.venv/bin/python"
[[ -x $VPY ]] || die "$VPY missing — run 'make venv' first (the guest runs the host's .venv)"
# The venv's interpreter is found through the host's / unless it lies in the checkout.
py="$(readlink -f "$VPY")"
if [[ $py/ != "$REPO"/* ]]; then
  case "$py/" in
    /tmp/*|/var/tmp/*|/run/*|/proc/*|/sys/*|/dev/*)
      die "the venv's interpreter $(printf '%q' "$py") (from $VPY) is under a directory the guest replaces (/tmp /var/tmp /run /proc /sys /dev); only the checkout itself is shared — make the venv from a Python installed elsewhere" ;;
  esac
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found — run 'make deps' (package qemu-system-x86)"

bash "$REPO/vm/build.sh"
# shellcheck source=/dev/null
. "$REPO/build/vm/current.env"
[[ -f ${VMLINUZ:-} && -f ${INITRD:-} ]] || die "vm/build.sh left no kernel/initramfs (build/vm/current.env)"

RES="$(mktemp -d "${TMPDIR:-/tmp}/bastion-vm.XXXXXX")"
QPID=""
cleanup() {
  [[ -n $QPID ]] && kill -KILL "$QPID" 2>/dev/null || true
  if [[ -n ${VM_KEEP:-} ]]; then
    mkdir -p "$VM_KEEP" && cp -a "$RES"/. "$VM_KEEP"/ && echo "vm/run.sh: results kept in $VM_KEEP" >&2
  fi
  rm -rf "$RES"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Pytest arguments go through the results share (no quoting limits).  Positional
# arguments under tests/ (files, dirs, node ids) and the in-VM benchmarks bench/vm_*.py
# (`make bench` runs bench/vm_sensors.py so) replace the default tests/vm.
paths=() args=()
for a in "$@"; do
  if [[ $a == tests/* || $a == ./tests/* || $a == bench/vm_*.py || $a == ./bench/vm_*.py ]]; then
    paths+=("$a")
  else
    args+=("$a")
  fi
done
((${#paths[@]})) || paths=(tests/vm)
term=dumb
if [[ -t 1 && -n ${TERM:-} ]]; then term="$TERM"; fi   # colours on a terminal only
{
  printf 'PYTEST_PATHS=('; printf '%q ' "${paths[@]}"; printf ')\n'
  printf 'PYTEST_ARGS=('
  if ((${#args[@]})); then printf '%q ' "${args[@]}"; fi
  printf ')\n'
  printf 'TERM=%q\n' "$term"
} > "$RES/args"
printf '%s\n' "$REPO" > "$RES/repo"   # where the guest mounts the repo share

append="console=ttyS0 panic=1"
if [[ -n ${CI+set} ]]; then
  [[ $CI =~ ^[A-Za-z0-9._-]*$ ]] || die "CI='$CI' cannot go on the kernel command line"
  append+=" bastion.ci=$CI"
fi
if [[ ${VM_DEBUG:-} == 1 ]]; then append+=" bastion.debug=1"; else append+=" quiet loglevel=5"; fi
# A kernel hang must end the run with its stacks, not at VM_TIMEOUT with nothing: a soft
# lockup prints every CPU's backtrace (warning level, shown at loglevel=5) and panics,
# and panic=1 with -no-reboot ends qemu.
append+=" softlockup_all_cpu_backtrace=1 softlockup_panic=1"
if [[ -n ${VM_LSM:-} ]]; then
  [[ $VM_LSM =~ ^[a-z0-9_]+(,[a-z0-9_]+)*$ ]] || die "VM_LSM='$VM_LSM' must be a comma-separated list of LSM names"
  append+=" lsm=$VM_LSM"
fi
[[ ${VM_SHELL:-} == 1 ]] && append+=" bastion.shell=1"
if [[ -n ${VM_APPEND:-} ]]; then
  # Extra guest kernel parameters for debugging (e.g. "loglevel=7").
  [[ $VM_APPEND =~ ^[A-Za-z0-9_.,=\ -]+$ ]] || die "VM_APPEND='$VM_APPEND' may hold only kernel parameters (letters, digits, _ . , = - and spaces)"
  append+=" $VM_APPEND"
fi

# The console (serial port + monitor on stdio, as -nographic gives) is also logged to
# console.txt in the results share: a guest kernel report is condensed from it at the end.
qemu=(qemu-system-x86_64 -accel "$VM_ACCEL" -cpu "$VM_CPU" -m "$VM_MEM" -smp "$VM_SMP"
      -nographic -no-reboot -nic none
      -chardev "stdio,id=con0,mux=on,logfile=${RES//,/,,}/console.txt"
      -serial chardev:con0 -mon chardev=con0,mode=readline
      -kernel "$VMLINUZ" -initrd "$INITRD" -append "$append"
      -fsdev "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap"
      -device "virtio-9p-pci,fsdev=root,mount_tag=hostroot"
      -fsdev "local,id=repo,path=${REPO//,/,,},security_model=none,readonly=on,multidevs=remap"
      -device "virtio-9p-pci,fsdev=repo,mount_tag=repo"
      -fsdev "local,id=results,path=${RES//,/,,},security_model=none,multidevs=remap"
      -device "virtio-9p-pci,fsdev=results,mount_tag=results")
[[ -n ${VM_GDB:-} ]] && qemu+=(-gdb "tcp:127.0.0.1:$VM_GDB")

echo "vm/run.sh: booting $KVER under qemu -accel $VM_ACCEL -cpu $VM_CPU (timeout ${VM_TIMEOUT}s); pytest args: ${*:-(none)}" >&2
start=$EPOCHREALTIME
set +e
timed_out=0
if [[ ${VM_SHELL:-} == 1 ]]; then
  # Interactive: qemu in the foreground on the terminal, no timeout.
  "${qemu[@]}"; qrc=$?
else
  "${qemu[@]}" < /dev/null & QPID=$!
  while kill -0 "$QPID" 2>/dev/null; do
    if ((${EPOCHREALTIME/./} - ${start/./} >= VM_TIMEOUT * 1000000)); then
      timed_out=1; kill -KILL "$QPID" 2>/dev/null; break
    fi
    sleep 0.2
  done
  wait "$QPID"; qrc=$?
  QPID=""
fi
set -e
elapsed="$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
[[ ${VM_SHELL:-} == 1 && -t 0 ]] && stty sane 2>/dev/null || true
echo >&2

fail=""
if ((timed_out)); then
  fail="timed out after ${VM_TIMEOUT}s (VM_TIMEOUT); qemu killed"
elif [[ -f $RES/init-error ]]; then
  fail="guest init failed: $(cat "$RES/init-error")"
elif [[ ! -f $RES/exit-code ]]; then
  fail="the guest wrote no exit code (qemu exit status $qrc; the kernel or /init died — rerun with VM_DEBUG=1)"
fi

summary="$("$VPY" "$REPO/vm/junit_summary.py" "$RES/junit.xml" 2>&1)" || true
read -r npass nfail nskip ntotal <<<"${summary:-x x x x}"
if [[ ! $ntotal =~ ^[0-9]+$ ]]; then
  [[ -n $fail ]] || fail="no usable JUnit report: $summary"
  npass=0 nfail=0 nskip=0 ntotal=0
fi
if [[ -z $fail ]]; then
  grc="$(cat "$RES/exit-code")"
  if [[ $grc == 5 ]]; then fail="pytest exit code 5: no tests collected"
  elif [[ $grc != 0 ]]; then fail="pytest exit code $grc"
  elif ((nfail > 0)); then fail="$nfail test(s) failed"
  elif ((ntotal - nskip == 0)); then fail="zero tests ran ($nskip skipped)"
  fi
fi

# A guest kernel report (lockup, oops, panic, WARNING, RCU stall, hung task) in a few
# lines, the last of the output: a CI log keeps only its tail.
report=""
[[ -f $RES/console.txt ]] && report="$("$VPY" "$REPO/vm/console_summary.py" "$RES/console.txt" 2>&1)" || true
if [[ -n $report ]]; then
  where="keep the whole console with VM_KEEP=DIR"
  [[ -n ${VM_KEEP:-} ]] && where="whole console: $VM_KEEP/console.txt"
  echo "vm/run.sh: the guest kernel reported ($where):" >&2
  sed 's/^/  /' <<<"$report" >&2
fi

variant=""
[[ -n ${VM_LSM:-} ]] && variant=", lsm=$VM_LSM"
echo "vm: $npass passed, $nfail failed, $nskip skipped (kernel ${KVER}${variant}, ${elapsed} s)"
if [[ -n $fail ]]; then
  echo "vm/run.sh: FAIL: $fail" >&2
  exit 1
fi
