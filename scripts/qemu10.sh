#!/usr/bin/env bash
# Places QEMU 10.0 from Debian's bookworm-backports in a directory beside Debian 12's QEMU 7.2
# (which stays installed and untouched) and prints the path of its qemu-system-x86_64.
# Usage: scripts/qemu10.sh [DIR]   (DIR: $LIVEMIG_QEMU10_DIR, else ${CARGO_TARGET_DIR:-target}/qemu10)
#
# The packages are fetched with `apt-get download` and unpacked with `dpkg -x`, never installed:
# qemu-system-x86 (the binary), qemu-system-common and qemu-system-data (10.0's own ROMs:
# linuxboot_dma.bin, kvmvapic.bin, ...) and seabios (10.0 needs seabios > 1.16.3, bookworm has
# 1.16.2). Every other dependency is a library bookworm already has. Debian's QEMU is not
# relocatable (it reads /usr/share/qemu and /usr/share/seabios), so the printed path is a small
# wrapper that execs the binary with `-L` for the unpacked firmware first.
# The backports source is added (/etc/apt/sources.list.d/livemig-backports.sources) if apt
# knows no bookworm-backports yet; that needs root. Once placed, a second run only checks the
# version (well under a second).
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${1:-${LIVEMIG_QEMU10_DIR:-${CARGO_TARGET_DIR:-target}/qemu10}}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
wrapper="$dir/bin/qemu-system-x86_64"
want='QEMU emulator version 10.0.'

if [[ -x "$wrapper" ]] && "$wrapper" --version 2>/dev/null | grep -q "^$want"; then
  echo "$wrapper"
  exit 0
fi

# shellcheck source=/dev/null
. /etc/os-release
if [[ "${VERSION_CODENAME:-}" != bookworm ]]; then
  echo "qemu10.sh: this places bookworm-backports' QEMU 10.0 on Debian 12 (bookworm); this is ${PRETTY_NAME:-unknown}" >&2
  exit 1
fi

# The backports source, if apt has none yet.
if ! apt-cache policy qemu-system-x86 | grep -q 'bookworm-backports'; then
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    if [[ $EUID -ne 0 ]]; then
      echo "qemu10.sh: adding the bookworm-backports source needs root" >&2
      exit 1
    fi
    cat > /etc/apt/sources.list.d/livemig-backports.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  apt-get update -qq >&2
fi

debs="$(mktemp -d)"
trap 'rm -rf "$debs"' EXIT
packages=(qemu-system-x86 qemu-system-common qemu-system-data seabios)
# As root, apt's sandbox user could not write to the temporary directory (apt would warn).
sandbox=()
[[ $EUID -eq 0 ]] && sandbox=(-o APT::Sandbox::User=root)
(cd "$debs" && apt-get download -qq "${sandbox[@]}" "${packages[@]/%//bookworm-backports}" >&2)

root="$dir/root"
rm -rf "$root"
mkdir -p "$root"
for deb in "$debs"/*.deb; do
  dpkg -x "$deb" "$root"
done

if ldd "$root/usr/bin/qemu-system-x86_64" | grep -q 'not found'; then
  echo "qemu10.sh: QEMU 10.0 needs libraries this machine lacks:" >&2
  ldd "$root/usr/bin/qemu-system-x86_64" | grep 'not found' >&2
  exit 1
fi

mkdir -p "$dir/bin"
cat > "$wrapper.tmp" <<EOF
#!/bin/sh
# QEMU 10.0 from bookworm-backports (scripts/qemu10.sh) with its own firmware and ROMs first.
exec "$root/usr/bin/qemu-system-x86_64" -L "$root/usr/share/qemu" -L "$root/usr/share/seabios" "\$@"
EOF
chmod 755 "$wrapper.tmp"
mv "$wrapper.tmp" "$wrapper"

if ! "$wrapper" --version | grep -q "^$want"; then
  echo "qemu10.sh: the placed QEMU is not 10.0:" >&2
  "$wrapper" --version >&2
  exit 1
fi
echo "$wrapper"
