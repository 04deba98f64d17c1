#!/usr/bin/env bash
# Builds the test guest: Debian's kernel plus a busybox initramfs holding the static
# livemig-guest-load program. Usage: scripts/build-guest.sh [OUT_DIR]
# OUT_DIR defaults to $LIVEMIG_GUEST_DIR, else ${CARGO_TARGET_DIR:-target}/guest. Writes
# OUT_DIR/vmlinuz and OUT_DIR/initramfs.cpio.gz. Needs linux-image-amd64, busybox-static, cpio.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
out="${1:-${LIVEMIG_GUEST_DIR:-$target/guest}}"
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

kernel="$(ls -1 /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -n1 || true)"
[[ -n "$kernel" ]] || { echo "build-guest: no /boot/vmlinuz-*-amd64 (apt-get install linux-image-amd64)" >&2; exit 1; }
busybox=/bin/busybox
[[ -x "$busybox" ]] && file_ok=$("$busybox" --list 2>/dev/null | grep -c '^sh$' || true) || file_ok=0
[[ "$file_ok" -ge 1 ]] || { echo "build-guest: no static busybox (apt-get install busybox-static)" >&2; exit 1; }
command -v cpio >/dev/null || { echo "build-guest: cpio is missing (apt-get install cpio)" >&2; exit 1; }

# The workload program, statically linked against glibc (RUSTFLAGS apply to the target only
# because --target is given, so build scripts and proc macros stay dynamic).
(cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
  -p livemig-guest-load --target x86_64-unknown-linux-gnu --target-dir "$target/guest-build")
load="$target/guest-build/x86_64-unknown-linux-gnu/release/livemig-guest-load"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,tmp}
cp "$busybox" "$stage/bin/busybox"
cp "$load" "$stage/bin/livemig-guest-load"
cat >"$stage/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
echo "livemig-guest: init up"
exec /bin/livemig-guest-load --cmdline /proc/cmdline
INIT
chmod +x "$stage/init"
(cd "$stage" && find . | LC_ALL=C sort | cpio --quiet -o -H newc | gzip -1 >"$out/initramfs.cpio.gz.new")
mv "$out/initramfs.cpio.gz.new" "$out/initramfs.cpio.gz"
cp "$kernel" "$out/vmlinuz"
echo "build-guest: $out/vmlinuz ($(basename "$kernel")), $out/initramfs.cpio.gz"
