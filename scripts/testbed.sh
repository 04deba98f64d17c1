#!/usr/bin/env bash
# Several livemig hosts on one machine: network namespaces joined by one Linux bridge (the
# "switch", in a namespace of its own), addresses in 198.18.0.0/24, tc shaping on each link.
# Nothing is created in the root namespace's network. See docs/testbed.md.
#
# Usage: scripts/testbed.sh up N [--system [--tls]]   N hosts (2..8): <prefix>-h1 .. <prefix>-hN
#        scripts/testbed.sh down        removes everything (succeeds when nothing is up)
#        scripts/testbed.sh status [--json]
#        scripts/testbed.sh meter       "SECONDS BYTES" every 100 ms: what enters the switch
#
# With --system, `up` also starts the RMS in the switch namespace (198.18.0.1:7700, SQLite)
# and an agent in every host namespace (256 MiB each), with a fresh token; with --tls the RMS
# has a CA and every API is HTTPS. `status` then prints how to point the CLI at it.
#
# Environment:
#   LM_TESTBED_RATE    rate of each host link, each direction (tc syntax: 1gbit, 200mbit; default 1gbit)
#   LM_TESTBED_PREFIX  namespace prefix (default "lm": lm-h1 .., lm-switch); tests use their own
#   LM_TESTBED_STATE   state directory (default /run/livemig-testbed)
#   LIVEMIG_BIN        the livemig binary for --system (default: livemig on PATH, else
#                      target/release/livemig, else target/debug/livemig)
#   LM_TESTBED_CAPACITY  each agent's --capacity-memory for --system (default 256MiB)
#   LM_TESTBED_RMS_ARGS  more flags of the RMS for --system, e.g. "--budget 60MiB/s --scheme budget"
# Needs root and iproute2 (ip, tc).
set -euo pipefail

PREFIX="${LM_TESTBED_PREFIX:-lm}"
RATE="${LM_TESTBED_RATE:-1gbit}"
STATE_DIR="${LM_TESTBED_STATE:-/run/livemig-testbed}"
SUBNET_PREFIX=198.18.0
MIN_HOSTS=2
MAX_HOSTS=8

SWITCH_NS="$PREFIX-switch"
BRIDGE=br0
# Where the RMS listens, in the switch namespace (on the bridge).
RMS_ADDR=198.18.0.1
STATE_FILE="$STATE_DIR/$PREFIX.state"
LOCK_FILE="$STATE_DIR/$PREFIX.lock"
# --system: the token, the RMS's store and CA, the logs.
SYSTEM_DIR="$STATE_DIR/$PREFIX.d"
RMS_PORT=7700
AGENT_PORT=7800

die() {
  echo "testbed: $*" >&2
  exit 1
}
usage() {
  sed -n '6,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# The livemig binary for --system.
livemig_bin() {
  local here
  here="$(cd "$(dirname "$0")/.." && pwd)"
  if [[ -n "${LIVEMIG_BIN:-}" ]]; then
    [[ -x "$LIVEMIG_BIN" ]] || die "LIVEMIG_BIN=$LIVEMIG_BIN is not an executable"
    echo "$LIVEMIG_BIN"
  elif command -v livemig >/dev/null; then
    command -v livemig
  elif [[ -x "$here/target/release/livemig" ]]; then
    echo "$here/target/release/livemig"
  elif [[ -x "$here/target/debug/livemig" ]]; then
    echo "$here/target/debug/livemig"
  else
    die "--system needs the livemig binary: build it (cargo build --release) or set LIVEMIG_BIN"
  fi
}

# The CLI's connection flags for the system of this testbed.
cli_flags() {
  if [[ -e "$SYSTEM_DIR/ca/ca.pem" ]]; then
    echo "--rms https://$RMS_ADDR:$RMS_PORT --ca-file $SYSTEM_DIR/ca/ca.pem --token-file $SYSTEM_DIR/token"
  else
    echo "--rms http://$RMS_ADDR:$RMS_PORT --token-file $SYSTEM_DIR/token"
  fi
}

# Waits (up to 30 s) until the RMS lists N alive hosts.
wait_alive() {
  local bin="$1" n="$2" alive=0
  for _ in $(seq 1 150); do
    # shellcheck disable=SC2046
    alive="$(ip netns exec "$SWITCH_NS" "$bin" host list --json $(cli_flags) 2>/dev/null |
      grep -Eo '"state": *"alive"' | wc -l || true)"
    ((alive >= n)) && return 0
    sleep 0.2
  done
  local f
  for f in "$SYSTEM_DIR"/*.log; do
    echo "== $f" >&2
    tail -5 "$f" >&2
  done
  die "the RMS sees $alive of $n agents alive after 30 s"
}

# Starts the RMS and one agent per host (--system).
start_system() {
  local n="$1" tls="$2" bin i ns capacity="${LM_TESTBED_CAPACITY:-256MiB}"
  bin="$(livemig_bin)"
  mkdir -p "$SYSTEM_DIR"
  chmod 700 "$SYSTEM_DIR"
  (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$SYSTEM_DIR/token")
  # The services must not inherit the lock (fd 9): it would outlive this script.
  local rms_args=(rms --listen "$RMS_ADDR:$RMS_PORT" --name testbed-rms
    --db "sqlite:$SYSTEM_DIR/rms.db" --token-file "$SYSTEM_DIR/token")
  ((tls)) && rms_args+=(--ca-dir "$SYSTEM_DIR/ca")
  # More flags of the RMS (the budget's), split on spaces.
  local extra
  read -r -a extra <<<"${LM_TESTBED_RMS_ARGS:-}"
  rms_args+=("${extra[@]}")
  ip netns exec "$SWITCH_NS" setsid "$bin" "${rms_args[@]}" \
    </dev/null >"$SYSTEM_DIR/rms.log" 2>&1 9>&- &
  # The RMS writes its CA on start: the agents need its certificate.
  for _ in $(seq 1 150); do
    grep -q "listening on" "$SYSTEM_DIR/rms.log" 2>/dev/null && break
    sleep 0.2
  done
  grep -q "listening on" "$SYSTEM_DIR/rms.log" || die "the RMS did not start: $(tail -5 "$SYSTEM_DIR/rms.log")"
  local scheme=http tls_args=()
  if ((tls)); then
    scheme=https
    tls_args=(--ca-file "$SYSTEM_DIR/ca/ca.pem")
  fi
  for ((i = 1; i <= n; i++)); do
    ns="$(host_ns "$i")"
    mkdir -p "$SYSTEM_DIR/h$i/vms"
    ip netns exec "$ns" setsid "$bin" agent --listen "$(host_addr "$i"):$AGENT_PORT" \
      --name "h$i" --token-file "$SYSTEM_DIR/token" --capacity-memory "$capacity" \
      --rms "$scheme://$RMS_ADDR:$RMS_PORT" "${tls_args[@]}" --hold-dir "$SYSTEM_DIR/h$i" \
      --state-dir "$SYSTEM_DIR/h$i/vms" \
      </dev/null >"$SYSTEM_DIR/agent-h$i.log" 2>&1 9>&- &
  done
  wait_alive "$bin" "$n"
  echo "system" >>"$STATE_FILE"
}

host_ns() { echo "$PREFIX-h$1"; }
host_addr() { echo "$SUBNET_PREFIX.$((10 + $1))"; }

# Bits per second of a tc rate ("200mbit", "1gbit", "500kbit", "1000000bit").
rate_bits() {
  local r="${1,,}" n unit
  [[ "$r" =~ ^([0-9]+)(bit|kbit|mbit|gbit)$ ]] || return 1
  n="${BASH_REMATCH[1]}"
  unit="${BASH_REMATCH[2]}"
  case "$unit" in
  bit) echo "$n" ;;
  kbit) echo "$((n * 1000))" ;;
  mbit) echo "$((n * 1000000))" ;;
  gbit) echo "$((n * 1000000000))" ;;
  esac
}

preflight() {
  [[ "$(id -u)" == 0 ]] || die "needs root (network namespaces, veths, tc)"
  command -v ip >/dev/null || die "needs iproute2: 'ip' not found"
  command -v tc >/dev/null || die "needs iproute2: 'tc' not found"
  [[ "$PREFIX" =~ ^[a-z][a-z0-9-]{0,23}$ ]] ||
    die "LM_TESTBED_PREFIX must be lowercase letters, digits and '-', starting with a letter (got '$PREFIX')"
  mkdir -p "$STATE_DIR"
  # One testbed operation at a time per prefix.
  exec 9>"$LOCK_FILE"
  command -v flock >/dev/null && { flock -w 30 9 || die "another testbed operation holds $LOCK_FILE"; }
  return 0
}

# Namespaces of this prefix that exist now (whatever the state file says).
our_namespaces() {
  ip netns list 2>/dev/null | awk '{print $1}' |
    grep -E "^${PREFIX}-(switch|h[0-9]+)\$" || true
}

# Shapes the egress of DEV in namespace NS to RATE with a token bucket. tbf needs a bucket of at
# least one MTU-sized packet; 5 ms worth of the rate (at least 64 KiB) keeps it exact without
# a kernel timer per packet. `latency` bounds the queue.
shape() {
  local ns="$1" dev="$2" bits burst
  bits="$(rate_bits "$RATE")"
  burst=$((bits / 8 / 200))
  ((burst >= 65536)) || burst=65536
  tc -n "$ns" qdisc replace dev "$dev" root tbf rate "$RATE" burst "$burst" latency 50ms ||
    die "tc tbf on $dev in $ns failed (is the sch_tbf qdisc available?)"
}

# EXIT trap of `up`: an `up` that did not finish removes what it made.
on_up_exit() {
  if ((UP_DONE == 0)); then
    echo "testbed: up failed, tearing down" >&2
    teardown >/dev/null 2>&1 || true
  fi
}

cmd_up() {
  local n="${1:-}" system=0 tls=0
  shift || true
  while (($#)); do
    case "$1" in
    --system) system=1 ;;
    --tls) tls=1 ;;
    *) die "up: unknown option '$1' (--system, --tls)" ;;
    esac
    shift
  done
  ((tls == 0 || system == 1)) || die "up: --tls goes with --system"
  if ! [[ "$n" =~ ^[1-9][0-9]?$ ]] || ((n < MIN_HOSTS || n > MAX_HOSTS)); then
    die "up needs a host count from $MIN_HOSTS to $MAX_HOSTS (got '${n}')"
  fi
  rate_bits "$RATE" >/dev/null ||
    die "LM_TESTBED_RATE must be a number with bit, kbit, mbit or gbit (got '$RATE')"
  preflight
  local existing
  existing="$(our_namespaces)"
  if [[ -e "$STATE_FILE" || -n "$existing" ]]; then
    die "a testbed with prefix '$PREFIX' already exists (${existing//$'\n'/ }); run 'scripts/testbed.sh down' first"
  fi

  # From here on, any failure (a failed command under set -e, or die) tears down what was made.
  UP_DONE=0
  trap on_up_exit EXIT

  ip netns add "$SWITCH_NS"
  ip -n "$SWITCH_NS" link set lo up
  ip -n "$SWITCH_NS" link add "$BRIDGE" type bridge
  # No spanning tree (one bridge, no loops) and no forwarding delay: ports forward at once.
  ip -n "$SWITCH_NS" link set "$BRIDGE" type bridge stp_state 0 forward_delay 0
  ip -n "$SWITCH_NS" link set "$BRIDGE" up
  # The management address: the RMS runs in the switch namespace, beside the hosts, and
  # reaches every agent (and they it) over the bridge.
  ip -n "$SWITCH_NS" addr add "$RMS_ADDR/24" dev "$BRIDGE"

  local i ns
  for ((i = 1; i <= n; i++)); do
    ns="$(host_ns "$i")"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # The pair is made directly in the two namespaces: eth0 in the host, hI in the switch.
    ip link add name eth0 netns "$ns" type veth peer name "h$i" netns "$SWITCH_NS"
    ip -n "$SWITCH_NS" link set "h$i" master "$BRIDGE"
    ip -n "$SWITCH_NS" link set "h$i" up
    ip -n "$ns" addr add "$(host_addr "$i")/24" dev eth0
    ip -n "$ns" link set eth0 up
    shape "$ns" eth0            # host -> switch
    shape "$SWITCH_NS" "h$i"    # switch -> host
  done

  {
    echo "prefix=$PREFIX"
    echo "hosts=$n"
    echo "rate=$RATE"
  } >"$STATE_FILE"
  if ((system)); then
    start_system "$n" "$tls"
  fi
  UP_DONE=1
  echo "testbed up: $n hosts ($(host_ns 1)..$(host_ns "$n")), switch $SWITCH_NS, $RATE per link"
  if ((system)); then
    echo "system up: the RMS at $RMS_ADDR:$RMS_PORT, an agent in every host; try:"
    echo "  ip netns exec $SWITCH_NS livemig host list $(cli_flags)"
  fi
}

# Kills what runs inside NS (TERM, then KILL).
kill_in() {
  local ns="$1" pids
  pids="$(ip netns pids "$ns" 2>/dev/null || true)"
  [[ -z "$pids" ]] && return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    pids="$(ip netns pids "$ns" 2>/dev/null || true)"
    [[ -z "$pids" ]] && return 0
    sleep 0.1
  done
  # KILL until none is left (a process may have forked meanwhile).
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
    pids="$(ip netns pids "$ns" 2>/dev/null || true)"
    [[ -z "$pids" ]] && return 0
  done
  echo "testbed: processes survive in $ns: $pids" >&2
}

teardown() {
  local ns failed=0
  for ns in $(our_namespaces); do
    kill_in "$ns"
  done
  # Deleting a namespace destroys its veth ends and, with the switch's, the bridge.
  for ns in $(our_namespaces); do
    ip netns del "$ns" || failed=1
  done
  rm -rf "$SYSTEM_DIR"
  rm -f "$STATE_FILE" "$LOCK_FILE"
  rmdir "$STATE_DIR" 2>/dev/null || true
  [[ -z "$(our_namespaces)" ]] || failed=1
  return "$failed"
}

cmd_down() {
  preflight
  teardown || die "could not remove every namespace of '$PREFIX': $(our_namespaces | tr '\n' ' ')"
  echo "testbed down"
}

# Rate of the root tbf qdisc on DEV in NS, as tc prints it ("-" if none).
shaping_of() {
  tc -n "$1" qdisc show dev "$2" root 2>/dev/null |
    awk '/^qdisc tbf/ { for (i = 1; i <= NF; i++) if ($i == "rate") { print $(i + 1); exit } }' |
    grep . || echo "-"
}

cmd_status() {
  local json=0
  [[ "${1:-}" == "--json" ]] && json=1
  [[ -n "${1:-}" && $json == 0 ]] && usage
  local namespaces
  namespaces="$(our_namespaces)"
  if [[ -z "$namespaces" ]]; then
    if ((json)); then echo '{"up":false,"hosts":[]}'; else echo "testbed: nothing up (prefix '$PREFIX')"; fi
    return 0
  fi
  local n rate
  n="$(sed -n 's/^hosts=//p' "$STATE_FILE" 2>/dev/null || true)"
  rate="$(sed -n 's/^rate=//p' "$STATE_FILE" 2>/dev/null || true)"
  if [[ -z "$n" ]]; then
    n="$(grep -c -- '-h[0-9]*$' <<<"$namespaces" || true)"
  fi
  local i ns addr up down pids sep="" rows=""
  if ((json)); then
    printf '{"up":true,"prefix":"%s","switch":"%s","bridge":"%s","rms_address":"%s","rate":"%s","hosts":[' \
      "$PREFIX" "$SWITCH_NS" "$BRIDGE" "$RMS_ADDR" "${rate:-unknown}"
  else
    echo "testbed '$PREFIX': $n hosts, switch $SWITCH_NS (bridge $BRIDGE, RMS address $RMS_ADDR), configured rate ${rate:-unknown}"
    if grep -qx system "$STATE_FILE" 2>/dev/null; then
      echo "system: ip netns exec $SWITCH_NS livemig host list $(cli_flags)"
    fi
    printf '%-16s %-16s %-12s %-12s %s\n' HOST ADDRESS EGRESS INGRESS PROCESSES
  fi
  for ((i = 1; i <= n; i++)); do
    ns="$(host_ns "$i")"
    addr="$(ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' || true)"
    up="$(shaping_of "$ns" eth0)"
    down="$(shaping_of "$SWITCH_NS" "h$i")"
    pids="$(ip netns pids "$ns" 2>/dev/null | wc -l)"
    if ((json)); then
      rows+="$sep{\"name\":\"$ns\",\"address\":\"${addr:-}\",\"egress\":\"$up\",\"ingress\":\"$down\",\"processes\":$pids}"
      sep=","
    else
      printf '%-16s %-16s %-12s %-12s %s\n' "$ns" "${addr:--}" "$up" "$down" "$pids"
    fi
  done
  if ((json)); then printf '%s]}\n' "$rows"; fi
}

# Prints "SECONDS BYTES" every 100 ms until killed: the wall clock and the sum of the rx_bytes
# of every host's port on the bridge (what entered the switch from the hosts, each frame once).
# Builtins only in the loop, so that sampling costs no process per line.
cmd_meter() {
  ip netns list 2>/dev/null | grep -qx "$SWITCH_NS\( .*\)\?" || die "no testbed with prefix '$PREFIX' is up"
  exec ip netns exec "$SWITCH_NS" bash -c 'while :; do s=0; for f in /sys/class/net/h[0-9]*/statistics/rx_bytes; do read -r v < "$f"; s=$((s + v)); done; echo "$EPOCHREALTIME $s"; sleep 0.1; done'
}

case "${1:-}" in
up) shift; cmd_up "$@" ;;
meter) shift; (($# == 0)) || usage; cmd_meter ;;
down) shift; (($# == 0)) || usage; cmd_down ;;
status) shift; cmd_status "$@" ;;
*) usage ;;
esac
