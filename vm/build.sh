#!/usr/bin/env bash
# Builds (or reuses) the test VM: Debian's stock kernel + a busybox initramfs.
#
#   bash vm/build.sh            # prints nothing new when everything is cached
#
# Output, all under build/vm/ (git-ignored via build/):
#   build/vm/<kver>/linux-image-<kver>_*.deb   the downloaded package (kept)
#   build/vm/<kver>/root/                      `dpkg -x` of it (never installed)
#   build/vm/<kver>/initramfs.cpio.gz          busybox + virtio/9p modules + vm/init
#   build/vm/<kver>/initramfs.stamp            hash of the initramfs inputs
#   build/vm/current.env                       KVER= VMLINUZ= INITRD= for vm/run.sh
#
# Idempotent: the kernel package is downloaded and unpacked once per version, the
# initramfs is rebuilt only when its inputs (vm/init, this script, busybox, the
# module set) change.  Env: VM_KERNEL_PKG=linux-image-6.1.0-NN-amd64 pins a kernel
# package instead of the one `apt-cache depends linux-image-amd64` names.
set -euo pipefail

die() { echo "vm/build.sh: error: $*" >&2; exit 1; }
log() { echo "vm/build.sh: $*" >&2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
OUT="$REPO/build/vm"
mkdir -p "$OUT"

# One build at a time (two `make` runs sharing a checkout).
exec 9>"$OUT/.lock"
flock 9

# --- host tools ------------------------------------------------------------
missing=()
for p in qemu-system-x86 busybox-static cpio; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]} == 0)) || die "missing Debian package(s): ${missing[*]} — run 'make deps' (scripts/install-deps.sh) or 'apt-get install ${missing[*]}'"
BUSYBOX=/bin/busybox
[[ -x $BUSYBOX ]] || die "$BUSYBOX not found although busybox-static is installed"
$BUSYBOX --list-full >/dev/null 2>&1 || die "$BUSYBOX does not support --list-full"
for t in apt-cache apt-get dpkg cpio gzip flock sha256sum; do
  command -v "$t" >/dev/null || die "host tool '$t' not found"
done

# --- which kernel ----------------------------------------------------------
kernel_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null \
    | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }'
}
PKG="${VM_KERNEL_PKG:-}"
if [[ -z $PKG ]]; then
  PKG="$(kernel_pkg || true)"
  if [[ -z $PKG ]]; then
    log "apt-cache knows no linux-image-amd64 dependency; running apt-get update"
    apt-get update -qq || die "apt-get update failed"
    PKG="$(kernel_pkg || true)"
  fi
fi
[[ $PKG =~ ^linux-image-(.+)$ ]] || die "cannot determine the kernel package (apt-cache depends linux-image-amd64 named nothing; set VM_KERNEL_PKG=linux-image-6.1.0-NN-amd64)"
KVER="${BASH_REMATCH[1]}"
KDIR="$OUT/$KVER"
KROOT="$KDIR/root"
mkdir -p "$KDIR"

# --- download + unpack (once per kernel version) ---------------------------
if [[ ! -f $KROOT/.unpacked ]]; then
  shopt -s nullglob
  debs=("$KDIR"/"$PKG"_*.deb)
  if ((${#debs[@]} == 0)); then
    log "downloading $PKG"
    if ! (cd "$KDIR" && apt-get download -q -o APT::Sandbox::User=root "$PKG"); then
      log "apt-get download failed; refreshing package lists once"
      apt-get update -qq || die "apt-get update failed"
      (cd "$KDIR" && apt-get download -q -o APT::Sandbox::User=root "$PKG") || die "apt-get download $PKG failed"
    fi
    debs=("$KDIR"/"$PKG"_*.deb)
    ((${#debs[@]})) || die "apt-get download $PKG produced no .deb in $KDIR"
  fi
  shopt -u nullglob
  log "unpacking ${debs[-1]##*/} (dpkg -x, not installed on the host)"
  rm -rf "$KROOT" "$KROOT.tmp"
  dpkg -x "${debs[-1]}" "$KROOT.tmp"
  mv "$KROOT.tmp" "$KROOT"
  touch "$KROOT/.unpacked"
fi

VMLINUZ="$KROOT/boot/vmlinuz-$KVER"
[[ -f $VMLINUZ ]] || die "$VMLINUZ missing from the unpacked package (rm -rf $KDIR to refetch)"
MODDIR=""
for d in "$KROOT/lib/modules/$KVER" "$KROOT/usr/lib/modules/$KVER"; do
  [[ -d $d ]] && MODDIR="$d" && break
done
[[ -n $MODDIR ]] || die "no lib/modules/$KVER in the unpacked package"

# --- module set: the list below, each preceded by its dependencies ---------
# Order as proven on Debian 12; dependencies come from each module's own
# `depends=` field, so a kernel that reshuffles them still loads in order.
# ext4 and loop (optional; crc32c_generic too: 6.1's ext4 loads crc32c at every
# mount): tests that need a filesystem reusing inode numbers loop-mount an ext4 image
# of their own (tests/support/extfs.py; the guest's /tmp is tmpfs, which never
# reuses one).  nfnetlink and nf_tables (optional, s23-muststop): the provenance gate's
# firewall test sends an nftables batch (tests/vm/test_provgate_lsm.py); the guest has
# no modprobe tree to autoload them from.  overlay (optional, s24): the atomics bench's
# sandbox is an overlayfs over the guest's root (bench/vm_atomics.py).
WANTED=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
        netfs fscache 9pnet 9pnet_virtio 9p crc32c_generic ext4 loop nfnetlink nf_tables
        overlay)
REQUIRED=(virtio_pci 9pnet_virtio 9p)
declare -A MODFILE=() SEEN=() BUILTIN=()
while IFS= read -r -d '' f; do
  b="${f##*/}"; b="${b%%.ko*}"; MODFILE[${b//-/_}]="$f"
done < <(find "$MODDIR" \( -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \) -print0)
if [[ -f $MODDIR/modules.builtin ]]; then
  while IFS= read -r l; do b="${l##*/}"; b="${b%.ko}"; BUILTIN[${b//-/_}]=1; done < "$MODDIR/modules.builtin"
fi

mod_depends() {  # prints the depends= list of a module file, one per line
  local f="$1"
  case "$f" in
    *.ko.xz)  xz -dc "$f" ;;
    *.ko.zst) zstd -dcq "$f" ;;
    *.ko.gz)  gzip -dc "$f" ;;
    *)        cat "$f" ;;
  esac | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n1 | tr ',' '\n' | sed '/^$/d'
}
ORDER=()
resolve() {  # $1 module name, $2 "dep" when pulled in as a dependency
  local m="${1//-/_}" d
  [[ -n ${SEEN[$m]:-} ]] && return 0
  SEEN[$m]=1
  if [[ -n ${BUILTIN[$m]:-} ]]; then log "module $m is built into $KVER"; return 0; fi
  if [[ -z ${MODFILE[$m]:-} ]]; then
    [[ ${2:-} == dep ]] && die "module $m (a dependency) not found in $MODDIR"
    log "module $m does not exist in $KVER, skipped"
    return 0
  fi
  while IFS= read -r d; do resolve "$d" dep; done < <(mod_depends "${MODFILE[$m]}")
  ORDER+=("$m")
}
for m in "${WANTED[@]}"; do resolve "$m"; done
for m in "${REQUIRED[@]}"; do
  [[ -n ${BUILTIN[$m]:-} || " ${ORDER[*]} " == *" $m "* ]] || die "kernel $KVER has no $m module: the VM cannot mount the host over virtio-9p"
done

# --- initramfs (rebuilt only when an input changes) ------------------------
INIT_SRC="$REPO/vm/init"
[[ -f $INIT_SRC ]] || die "$INIT_SRC missing"
INITRD="$KDIR/initramfs.cpio.gz"
STAMP="$KDIR/initramfs.stamp"
inputs_hash() {
  {
    for f in "$INIT_SRC" "$REPO/vm/build.sh" "$BUSYBOX"; do sha256sum < "$f"; done
    for m in "${ORDER[@]}"; do sha256sum < "${MODFILE[$m]}"; done
    echo "${ORDER[*]}"
  } | sha256sum | cut -d' ' -f1
}
HASH="$(inputs_hash)"
if [[ -f $INITRD && -f $STAMP && "$(cat "$STAMP")" == "$HASH" ]]; then
  :
else
  log "building initramfs for $KVER (modules: ${ORDER[*]})"
  STAGE="$(mktemp -d "$KDIR/initramfs.XXXXXX")"
  trap 'rm -rf "$STAGE"' EXIT
  mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,newroot,modules,etc,tmp}
  cp "$BUSYBOX" "$STAGE/bin/busybox"
  # == `busybox --install -s`, done at build time (no /proc needed at boot).
  while IFS= read -r a; do
    [[ $a == bin/busybox ]] && continue
    mkdir -p "$STAGE/$(dirname "$a")"
    ln -sf /bin/busybox "$STAGE/$a"
  done < <($BUSYBOX --list-full)
  [[ -e $STAGE/bin/sh ]] || die "busybox provides no sh applet"
  : > "$STAGE/modules/order"
  for m in "${ORDER[@]}"; do
    f="${MODFILE[$m]}"
    # busybox insmod reads plain .ko only: decompress here.
    case "$f" in
      *.ko.xz)  command -v xz >/dev/null || die "need 'xz' to decompress $f"; xz -dc "$f" > "$STAGE/modules/$m.ko" ;;
      *.ko.zst) command -v zstd >/dev/null || die "need 'zstd' to decompress $f"; zstd -dcq "$f" > "$STAGE/modules/$m.ko" ;;
      *.ko.gz)  gzip -dc "$f" > "$STAGE/modules/$m.ko" ;;
      *)        cp "$f" "$STAGE/modules/$m.ko" ;;
    esac
    echo "$m" >> "$STAGE/modules/order"
  done
  echo "$KVER" > "$STAGE/etc/kernel-version"
  install -m 0755 "$INIT_SRC" "$STAGE/init"
  (cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) \
    | gzip -1 > "$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  echo "$HASH" > "$STAMP"
  rm -rf "$STAGE"
  trap - EXIT
fi

# Sourced by vm/run.sh: quoted, the checkout path may hold blanks or quotes.
printf 'KVER=%q\nVMLINUZ=%q\nINITRD=%q\n' "$KVER" "$VMLINUZ" "$INITRD" > "$OUT/current.env.tmp"
mv "$OUT/current.env.tmp" "$OUT/current.env"
