#!/usr/bin/env bash
# Builds the test guest (docs/design.md §15): Debian's kernel booted directly (no disk image, no bootloader)
# with a busybox initramfs whose /init (scripts/guest/init) loads virtio, reports its disks and runs the
# workload. From Debian packages only, unpacked into a scratch dir: nothing is installed on the host.
#   Output (default <repo>/.tools/guest; VOLSNAP_GUEST_DIR or $1 overrides): vmlinuz, initrd.img, manifest.json.
#   Idempotent: skipped when the outputs exist and the inputs (this script, the init, busybox, the kernel
#   version) are the ones the manifest records.
# Needs: apt-get/apt-cache (the Debian archive), dpkg-deb, busybox-static (/usr/bin/busybox), gzip, sha256sum.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-${VOLSNAP_GUEST_DIR:-$repo/.tools/guest}}
init_src=$repo/scripts/guest/init
busybox=/usr/bin/busybox

log() { printf '[build-guest] %s\n' "$*"; }
die() { log "$*" >&2; exit 1; }

# Static: the initramfs has no libc. busybox-static's binary is; the dynamic busybox package's is not.
dpkg -s busybox-static >/dev/null 2>&1 || die "busybox-static is not installed (apt-get install busybox-static; npm run setup does)"
[ -x "$busybox" ] || die "$busybox missing"

# The concrete package behind the metapackage: the kernel version is what the manifest pins.
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || die "apt-cache knows no linux-image-amd64 (apt-get update?)"
kver=${pkg#linux-image-}
pkgver=$(apt-cache show "$pkg" | awk '/^Version:/ {print $2; exit}')

inputs=$( { sha256sum "$0" "$init_src" "$busybox" | awk '{print $1}'; echo "$pkg=$pkgver"; } | sha256sum | awk '{print $1}')
if [ -f "$out/manifest.json" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ] &&
  grep -q "\"inputsHash\": \"$inputs\"" "$out/manifest.json"; then
  log "up to date: $out (kernel $kver)"
  exit 0
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/volsnap-guest.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# apt's _apt user downloads into the current dir when it may write there (no "unsandboxed" warning).
chmod 0777 "$scratch"
log "downloading $pkg $pkgver"
(cd "$scratch" && apt-get download -q "$pkg=$pkgver" >/dev/null 2>&1) || (cd "$scratch" && apt-get download "$pkg=$pkgver")
deb=$(ls "$scratch"/*.deb)
dpkg-deb -x "$deb" "$scratch/pkg"
moddir=$scratch/pkg/lib/modules/$kver
[ -d "$moddir" ] || die "$deb has no lib/modules/$kver"

root=$scratch/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,var/log,etc/acpi/PWRF,lib/modules}
cp "$busybox" "$root/bin/busybox"
# Applet links: the init calls applets by name (sh, mount, insmod, dd, sha256sum, acpid, poweroff...).
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
install -m 0755 "$init_src" "$root/init"
# busybox acpid runs the file named by the power button's action (PWRF/00000080) from its config dir.
cat > "$root/etc/acpi/PWRF/00000080" <<'SH'
#!/bin/sh
# The workload stopped first: its last block is written whole before the power goes.
echo "volsnap-guest: power button: powering off" > /dev/console
[ -f /run/workload.pid ] && kill "$(cat /run/workload.pid)" 2>/dev/null
sync
poweroff -f
SH
chmod 0755 "$root/etc/acpi/PWRF/00000080"

# Modules the kernel builds as modules and the guest needs, in load order (each after what it depends on):
# virtio-blk over virtio-pci; the ACPI power button and evdev, which acpid reads it through.
modules="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev
  drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci drivers/block/virtio_blk
  drivers/acpi/button drivers/input/evdev"
: > "$root/lib/modules/order"
for m in $modules; do
  src=$(ls "$moddir/kernel/$m".ko* 2>/dev/null | head -1)
  [ -n "$src" ] || die "module $m not in $pkg"
  name=$(basename "$m")
  # busybox insmod takes plain .ko only: a compressed module is unpacked here.
  case "$src" in
    *.ko) cp "$src" "$root/lib/modules/$name.ko" ;;
    *.ko.xz) xz -dc "$src" > "$root/lib/modules/$name.ko" ;;
    *.ko.zst) zstd -qdc "$src" > "$root/lib/modules/$name.ko" ;;
    *.ko.gz) gzip -dc "$src" > "$root/lib/modules/$name.ko" ;;
    *) die "unknown module format: $src" ;;
  esac
  echo "$name" >> "$root/lib/modules/order"
done

mkdir -p "$out"
# Written beside the outputs and renamed: a reader never sees a half-written kernel or initramfs.
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null) | gzip -9n > "$out/initrd.img.tmp"
cp "$scratch/pkg/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initrd.img.tmp" "$out/initrd.img"
files=$(cd "$out" && for f in vmlinuz initrd.img; do printf '    "%s": {"bytes": %s, "sha256": "%s"}' "$f" "$(stat -c %s "$f")" "$(sha256sum "$f" | awk '{print $1}')"; [ "$f" = initrd.img ] || printf ',\n'; done)
cat > "$out/manifest.json.tmp" <<JSON
{
  "kernelVersion": "$kver",
  "kernelPackage": "$pkg=$pkgver",
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "inputsHash": "$inputs",
  "files": {
$files
  }
}
JSON
mv "$out/manifest.json.tmp" "$out/manifest.json"
log "built $out (kernel $kver, initrd $(stat -c %s "$out/initrd.img") bytes)"
