#!/usr/bin/env bash
# Runs every test of livemig on a fresh machine: installs what the tests need, then checks
# formatting, lints and the whole test suite. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

# Debian packages the tests need: QEMU (TCG) and the test guest's parts (Debian's kernel,
# a static busybox, cpio for the initramfs); iproute2 (ip, tc) for the namespace testbed
# (scripts/testbed.sh), whose test needs root; postgresql for the store's PostgreSQL tests (a
# throwaway cluster, scripts/postgres.sh: Debian's own cluster is not used); curl for the
# system tests, which ask agents inside the testbed's namespaces directly; chromium for the
# RMS dashboard's test in a headless browser.
PACKAGES=(qemu-system-x86 linux-image-amd64 busybox-static cpio iproute2 postgresql curl chromium)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  apt-get update -qq
  # --no-install-recommends: qemu-system-x86's recommends drag in a GUI stack; a newer
  # qemu-utils from backports conflicts with QEMU 7.2 and is removed (the tests do not use it).
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "test guest (scripts/build-guest.sh)"
scripts/build-guest.sh

# Every real-QEMU test runs QEMU 10.0 (bookworm-backports, placed beside Debian's 7.2 without
# replacing it); one governed migration runs again on 7.2 after the test suite.
say "QEMU 10.0 beside 7.2 (scripts/qemu10.sh)"
LIVEMIG_QEMU="$(scripts/qemu10.sh)"
export LIVEMIG_QEMU
"$LIVEMIG_QEMU" --version | head -n 1

say "PostgreSQL for the store tests (scripts/postgres.sh)"
log="$(mktemp)"
pgdir="$(mktemp -d)"
cleanup() {
  scripts/postgres.sh stop "$pgdir" || true
  rm -f "$log"
}
trap cleanup EXIT
LIVEMIG_TEST_POSTGRES="$(scripts/postgres.sh start "$pgdir")"
export LIVEMIG_TEST_POSTGRES
echo "$LIVEMIG_TEST_POSTGRES"

say "cargo test"
cargo test --workspace --locked 2>&1 | tee "$log"

say "QEMU 7.2 (Debian's own): a governed migration of a loaded guest"
qemu-system-x86_64 --version | head -n 1
# --workspace (with the one test target named real_qemu) keeps the features of the run above, so
# nothing is compiled again.
LIVEMIG_QEMU=qemu-system-x86_64 cargo test --workspace --locked --test real_qemu -- \
  --exact dirty_factor_governs_a_loaded_guest_to_completion 2>&1 | tee -a "$log"

say "README main command (cargo run -- demo) from the workspace root"
cargo run --quiet --locked -- demo --json > /dev/null

# One closing line for the whole run, summed over every test binary above.
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
