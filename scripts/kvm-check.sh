#!/usr/bin/env bash
# Real KVM check: Berth on real QEMU through libvirt (qemu:///system), not the test driver.
#
# 1. Sets the host up, idempotently: installs libvirt-daemon-system and qemu-system-<arch>
#    only when missing (pinning qemu-utils to the matching version when a newer one is
#    installed, as on these machines), starts virtlogd and libvirtd only when not running,
#    lets the QEMU user open /dev/kvm, and falls back to TCG (domain type qemu) when KVM
#    still is not usable.
# 2. Default (also --through-engine): runs berth-engine and berth-node on the URI and drives
#    a server through the berth CLI (create, stop, start, pause, unpause, reboot, reboot
#    --hard, suspend, resume, rebuild, snapshot, delete), comparing after each step the power
#    state Berth reports with `virsh domstate`.
#    --direct: instead builds compute-node/examples/kvm_smoke.rs and runs it: every Hypervisor
#    operation of LibvirtHypervisor on a diskless 1 vCPU / 64 MiB guest, each checked against
#    libvirt's own view of the domain; prints a table; fails on any mismatch.
#
# Needs root (packages, daemons, /dev/kvm). Not part of .ci/run.
#
# Usage: sudo ./scripts/kvm-check.sh [--direct] [--uri URI] [--virt-type kvm|qemu]
#                                    [--no-setup] [--release]
# Env:   BERTH_PORT (engine port, default 50061)
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=engine
URI=qemu:///system
VIRT_TYPE=        # empty: what libvirt offers (kvm when usable), decided in setup
SETUP=1
PROFILE=()
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --through-engine) MODE=engine ;;
    --direct) MODE=direct ;;
    --uri) URI=$2; shift ;;
    --virt-type) VIRT_TYPE=$2; shift ;;
    --no-setup) SETUP=0 ;;
    --release) PROFILE=(--release) ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case $VIRT_TYPE in ''|kvm|qemu) ;; *) echo "--virt-type must be kvm or qemu" >&2; exit 2 ;; esac

VIRSH=(virsh -c "$URI")

# ---- 1. host setup --------------------------------------------------------------------------

install_missing() {
  local arch qemu_pkg missing=() pin=()
  arch=$(uname -m)
  qemu_pkg=qemu-system-x86
  case $arch in
    x86_64|i686) qemu_pkg=qemu-system-x86 ;;
    aarch64) qemu_pkg=qemu-system-arm ;;
    *) qemu_pkg=qemu-system-misc ;;
  esac
  command -v libvirtd >/dev/null && command -v virsh >/dev/null || missing+=(libvirt-daemon-system)
  command -v "qemu-system-$arch" >/dev/null || missing+=("$qemu_pkg")
  [ ${#missing[@]} -eq 0 ] && { echo "packages: libvirt and qemu present"; return; }
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # A qemu-utils newer than the distribution's QEMU (10.x from backports on Debian 12 next to
  # qemu 7.2) conflicts with qemu-system-common: install the matching one beside it.
  local have cand
  have=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
  cand=$(apt-cache policy "$qemu_pkg" | awk '/Candidate:/ {print $2}')
  if [ -n "$have" ] && [ -n "$cand" ] && [ "$cand" != "(none)" ] \
    && dpkg --compare-versions "$have" gt "$cand"; then
    echo "   qemu-utils $have is newer than $qemu_pkg $cand: pinning qemu-utils=$cand"
    pin=("qemu-utils=$cand" --allow-downgrades)
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" "${pin[@]}"
}

start_daemons() {
  if [ -d /run/systemd/system ]; then
    systemctl is-active -q virtlogd || systemctl start virtlogd
    systemctl is-active -q libvirtd || systemctl start libvirtd
  else
    pgrep -x virtlogd >/dev/null || { echo "starting virtlogd"; virtlogd -d; }
    pgrep -x libvirtd >/dev/null || { echo "starting libvirtd"; libvirtd -d; }
  fi
  local _
  for _ in $(seq 50); do "${VIRSH[@]}" version >/dev/null 2>&1 && break; sleep 0.2; done
  "${VIRSH[@]}" version
}

# The user QEMU runs as under qemu:///system (qemu.conf's `user`, Debian's default otherwise).
qemu_user() {
  local u
  u=$(sed -n 's/^[[:space:]]*user[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' /etc/libvirt/qemu.conf 2>/dev/null | tail -1)
  echo "${u:-libvirt-qemu}"
}

# Makes /dev/kvm usable by the QEMU user where possible; sets VIRT_TYPE to kvm or qemu.
choose_virt_type() {
  local user
  user=$(qemu_user)
  if [ -e /dev/kvm ]; then
    if [ "$(stat -c %G /dev/kvm)" != kvm ] || [ "$(stat -c %a /dev/kvm)" != 660 ]; then
      if getent group kvm >/dev/null; then
        echo "letting group kvm open /dev/kvm (was $(stat -c '%U:%G %a' /dev/kvm))"
        chgrp kvm /dev/kvm && chmod 0660 /dev/kvm || true
      fi
    fi
  fi
  local usable=0
  if [ -e /dev/kvm ] && id "$user" >/dev/null 2>&1 \
    && runuser -u "$user" -- sh -c 'exec 3<>/dev/kvm' 2>/dev/null \
    && "${VIRSH[@]}" domcapabilities --virttype kvm >/dev/null 2>&1; then
    usable=1
  fi
  echo "/dev/kvm: $(ls -l /dev/kvm 2>/dev/null || echo missing); QEMU user $user can use it: $([ $usable = 1 ] && echo yes || echo no)"
  if [ -z "$VIRT_TYPE" ]; then
    if [ $usable = 1 ]; then VIRT_TYPE=kvm; else VIRT_TYPE=qemu; fi
  elif [ "$VIRT_TYPE" = kvm ] && [ $usable = 0 ]; then
    echo "warning: --virt-type kvm but KVM does not look usable; spawns will likely fail" >&2
  fi
  echo "domain type: $VIRT_TYPE"
}

setup_host() {
  echo "== host setup"
  [ "$(id -u)" -eq 0 ] || { echo "run as root (packages, daemons, /dev/kvm)" >&2; exit 1; }
  if [ -f scripts/deps.sh ]; then
    # shellcheck source=scripts/deps.sh
    . scripts/deps.sh
    ensure_deps
  fi
  install_missing
  start_daemons
  choose_virt_type
}

# ---- 2a. direct smoke (default) -------------------------------------------------------------

direct_smoke() {
  echo "== building and running the smoke (compute-node/examples/kvm_smoke.rs) on $URI"
  local args=(--uri "$URI" --shutdown-timeout 3)
  [ -n "$VIRT_TYPE" ] && args+=(--virt-type "$VIRT_TYPE")
  cargo build --locked "${PROFILE[@]}" -p berth-node --example kvm_smoke
  cargo run -q --locked "${PROFILE[@]}" -p berth-node --example kvm_smoke -- "${args[@]}"
}

# ---- 2b. through the engine and the CLI ------------------------------------------------------

through_engine() {
  echo "== building berth-engine, berth-node, berth (release)"
  cargo build --release --locked -p berth-engine -p berth-node -p berth-cli
  local BIN=target/release PORT=${BERTH_PORT:-50061} RUN=target/kvm NODE_NAME
  export BERTH_ENGINE="http://127.0.0.1:$PORT"
  mkdir -p "$RUN"
  # The engine's token key and admin token (which the CLI reads) live here.
  export BERTH_DATA_DIR="$PWD/$RUN/data"
  NODE_NAME="kvm-$(hostname -s)"
  if [ "$VIRT_TYPE" = qemu ] && "${VIRSH[@]}" domcapabilities --virttype kvm >/dev/null 2>&1; then
    # berth-node picks kvm whenever libvirt offers it and has no setting to force qemu yet.
    echo "warning: KVM is offered by libvirt but not usable by the QEMU user; berth-node will" \
      "still write type kvm and spawns will fail" >&2
  fi

  rm -rf "$RUN/data"
  "$BIN/berth-engine" serve --listen "127.0.0.1:$PORT" --metrics-listen "" --data-dir "$RUN/data" \
    >"$RUN/engine.log" 2>&1 &
  ENGINE=$!
  NODE=
  UUID=
  cleanup() {
    [ -n "$UUID" ] && "${VIRSH[@]}" dominfo "$UUID" >/dev/null 2>&1 \
      && "$BIN/berth" server delete "$UUID" >/dev/null 2>&1 || true
    [ -n "$NODE" ] && kill "$NODE" 2>/dev/null || true
    [ -n "$ENGINE" ] && kill "$ENGINE" 2>/dev/null || true
  }
  trap cleanup EXIT
  local _
  for _ in $(seq 100); do "$BIN/berth" host list >/dev/null 2>&1 && break; sleep 0.1; done

  # The node authenticates with a node token for its own name.
  BERTH_NODE_TOKEN=$("$BIN/berth-engine" token issue --role node --subject "$NODE_NAME" --ttl 1d 2>/dev/null) \
  "$BIN/berth-node" --engine "$BERTH_ENGINE" --name "$NODE_NAME" --libvirt-uri "$URI" \
    --heartbeat-interval 1 --shutdown-timeout 5 >"$RUN/node.log" 2>&1 &
  NODE=$!
  for _ in $(seq 100); do
    "$BIN/berth" host show "$NODE_NAME" >/dev/null 2>&1 && break
    kill -0 "$NODE" 2>/dev/null || { echo "berth-node exited:"; cat "$RUN/node.log"; exit 1; }
    sleep 0.1
  done
  "$BIN/berth" host show "$NODE_NAME"

  b() { echo "\$ berth $*" >&2; "$BIN/berth" --timeout 300 "$@"; }
  # Both may exist from an earlier run against the same engine: only a fresh engine is used
  # here, so failures are real.
  b flavor create kvm.tiny --vcpus 1 --ram 64 --disk 0 >/dev/null
  b image create kvm-diskless >/dev/null
  b image create kvm-diskless-b >/dev/null
  # json_field KEY < JSON: a top-level string field of an object (or of a list's first one).
  json_field() {
    python3 -c 'import json, sys
d = json.load(sys.stdin)
d = d[0] if isinstance(d, list) and d else d
print(d.get(sys.argv[1], "") if isinstance(d, dict) else "")' "$1"
  }
  local out
  out=$(b server create kvm-smoke --flavor kvm.tiny --image kvm-diskless -o json)
  UUID=$(json_field uuid <<<"$out")
  [ -n "$UUID" ] || { echo "no server uuid in the create output:"; echo "$out"; exit 1; }
  echo "created server $UUID"

  fails=0
  # check STEP WANT_VM_STATE WANT_POWER WANT_VIRSH: Berth's view against libvirt's.
  check() {
    local step=$1 want_vm=$2 want_power=$3 want_virsh=$4 show vm power virsh_state
    show=$("$BIN/berth" server show "$UUID" -o json)
    vm=$(json_field vm_state <<<"$show")
    power=$(json_field power_state <<<"$show")
    virsh_state=$("${VIRSH[@]}" domstate "$UUID" 2>/dev/null) || virsh_state="(none)"
    virsh_state=${virsh_state%%$'\n'*}
    if [ "${vm#VM_STATE_}" = "${want_vm#VM_STATE_}" ] && [ "$power" = "$want_power" ] \
      && [ "$virsh_state" = "$want_virsh" ]; then
      printf '  %-14s berth %-10s %-9s libvirt %-16s ok\n' "$step" "$vm" "$power" "$virsh_state"
    else
      printf '  %-14s berth %-10s %-9s libvirt %-16s MISMATCH (want %s %s / %s)\n' \
        "$step" "$vm" "$power" "$virsh_state" "$want_vm" "$want_power" "$want_virsh"
      fails=$((fails + 1))
    fi
  }

  echo "== driving $UUID on $URI"
  check create ACTIVE RUNNING running
  "${VIRSH[@]}" dumpxml "$UUID" | sed -n "/<domain \|<memory\|<vcpu\|<type /s/^/    /p"
  b server stop "$UUID" >/dev/null;            check stop STOPPED SHUTOFF "shut off"
  b server start "$UUID" >/dev/null;           check start ACTIVE RUNNING running
  b server pause "$UUID" >/dev/null;           check pause PAUSED PAUSED paused
  b server unpause "$UUID" >/dev/null;         check unpause ACTIVE RUNNING running
  b server reboot "$UUID" >/dev/null;          check reboot ACTIVE RUNNING running
  b server reboot --hard "$UUID" >/dev/null;   check reboot-hard ACTIVE RUNNING running
  b server suspend "$UUID" >/dev/null;         check suspend SUSPENDED SUSPENDED "shut off"
  # (Output captured first: `virsh | grep -q` under pipefail fails when grep quits early.)
  local info xml
  info=$("${VIRSH[@]}" dominfo "$UUID")
  if grep -q '^Managed save: *yes' <<<"$info"; then
    echo "  suspend        libvirt holds a managed-save image            ok"
  else
    echo "  suspend        no managed-save image in libvirt              MISMATCH"
    fails=$((fails + 1))
  fi
  b server resume "$UUID" >/dev/null;          check resume ACTIVE RUNNING running
  b server rebuild "$UUID" --image kvm-diskless-b >/dev/null
  check rebuild ACTIVE RUNNING running
  xml=$("${VIRSH[@]}" dumpxml "$UUID")
  if grep -q "name=[\"']kvm-diskless-b[\"']" <<<"$xml"; then
    echo "  rebuild        domain metadata names image kvm-diskless-b      ok"
  else
    echo "  rebuild        domain metadata does not name kvm-diskless-b    MISMATCH"
    fails=$((fails + 1))
  fi
  # A diskless QEMU domain cannot be snapshotted (libvirt's internal snapshots need qcow2
  # disks): the driver answers UNSUPPORTED, so the snapshot must fail and change nothing.
  if out=$(b server snapshot "$UUID" --name kvm-smoke-snap 2>&1); then
    echo "  snapshot       succeeded on a diskless QEMU domain (unexpected): $out"
    fails=$((fails + 1))
  else
    echo "  snapshot       refused as expected: ${out##*$'\n'}"
  fi
  check after-snapshot ACTIVE RUNNING running
  b server delete "$UUID" >/dev/null
  if "${VIRSH[@]}" dominfo "$UUID" >/dev/null 2>&1; then
    echo "  delete         domain still defined in libvirt  MISMATCH"; fails=$((fails + 1))
  else
    echo "  delete         domain gone from libvirt         ok"
    UUID=
  fi

  kill "$NODE"; wait "$NODE" 2>/dev/null || true; NODE=
  kill -TERM "$ENGINE"; wait "$ENGINE" || true; ENGINE=
  trap - EXIT
  if [ "$fails" -gt 0 ]; then
    echo "FAILED: $fails mismatches (logs: $RUN/engine.log, $RUN/node.log)"
    exit 1
  fi
  echo "OK: every step matched on real QEMU (logs in $RUN/)"
}

# ---- main -----------------------------------------------------------------------------------

if [ $SETUP = 1 ]; then setup_host; fi
case $MODE in
  direct) direct_smoke ;;
  engine) through_engine ;;
esac
