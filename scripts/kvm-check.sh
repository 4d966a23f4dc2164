#!/usr/bin/env bash
# Real KVM check: runs berth-engine and berth-node on qemu:///system (real QEMU, KVM when
# /dev/kvm is usable, otherwise TCG), creates a diskless 64 MiB server through the CLI and
# drives stop / start / pause / unpause / reboot (soft and hard) / delete, checking after
# each step the domain's real state as libvirt reports it (virsh domstate) against the
# state Berth reports. Needs root (it installs packages and starts libvirtd). Not part of
# the CI suite.
#
# Usage: sudo ./scripts/kvm-check.sh        Env: BERTH_PORT (default 50061)
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/deps.sh
. scripts/deps.sh
ensure_deps

need_install=()
command -v libvirtd >/dev/null || need_install+=(libvirt-daemon-system)
command -v qemu-system-x86_64 >/dev/null || need_install+=(qemu-system-x86)
if [ ${#need_install[@]} -gt 0 ]; then
  echo "== installing ${need_install[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Debian 12's qemu 7.2 conflicts with a newer preinstalled qemu-utils: pin the matching one.
  extra=()
  if apt-cache policy qemu-utils 2>/dev/null | grep -q '1:7.2+dfsg-7+deb12u18+b3'; then
    extra=(qemu-utils=1:7.2+dfsg-7+deb12u18+b3 --allow-downgrades)
  fi
  apt-get install -y -qq "${need_install[@]}" "${extra[@]}"
fi

echo "== libvirt daemons"
pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d
for _ in $(seq 50); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
virsh -c qemu:///system version

if [ -e /dev/kvm ]; then
  # Let the qemu user open /dev/kvm; without it QEMU falls back to TCG (slower, still works).
  chgrp kvm /dev/kvm 2>/dev/null || true
  chmod 0660 /dev/kvm 2>/dev/null || true
  echo "/dev/kvm: $(ls -l /dev/kvm)"
else
  echo "/dev/kvm missing: domains run under TCG"
fi

echo "== building (release)"
cargo build --release --locked -p berth-engine -p berth-node -p berth-cli
BIN=target/release
PORT=${BERTH_PORT:-50061}
export BERTH_ENGINE="http://127.0.0.1:$PORT"
RUN=target/kvm
mkdir -p "$RUN"
NODE_NAME="kvm-$(hostname -s)"

"$BIN/berth-engine" serve --listen "127.0.0.1:$PORT" --metrics-listen "" >"$RUN/engine.log" 2>&1 &
ENGINE=$!
NODE=
cleanup() {
  [ -n "$NODE" ] && kill "$NODE" 2>/dev/null || true
  kill "$ENGINE" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do "$BIN/berth" host list >/dev/null 2>&1 && break; sleep 0.1; done

"$BIN/berth-node" --engine "$BERTH_ENGINE" --name "$NODE_NAME" --libvirt-uri qemu:///system \
  --heartbeat-interval 1 --shutdown-timeout 5 >"$RUN/node.log" 2>&1 &
NODE=$!
for _ in $(seq 100); do
  "$BIN/berth" host show "$NODE_NAME" >/dev/null 2>&1 && break
  kill -0 "$NODE" 2>/dev/null || { echo "berth-node exited:"; cat "$RUN/node.log"; exit 1; }
  sleep 0.1
done
"$BIN/berth" host show "$NODE_NAME"

b() { echo "\$ berth $*"; "$BIN/berth" --timeout 300 "$@"; }
b flavor create kvm.tiny --vcpus 1 --ram 64 --disk 0 >/dev/null
b image create kvm-diskless >/dev/null
out=$(b server create kvm-smoke --flavor kvm.tiny --image kvm-diskless -o json)
UUID=$(echo "$out" | grep -o '"uuid": *"[^"]*"' | head -1 | cut -d'"' -f4)
[ -n "$UUID" ] || { echo "no server uuid in the create output:"; echo "$out"; exit 1; }
echo "created server $UUID"

fails=0
# check STEP WANT_BERTH_POWER WANT_VIRSH_STATE: compares Berth's view with libvirt's.
check() {
  local step=$1 want_power=$2 want_virsh=$3 power virsh_state
  power=$("$BIN/berth" server show "$UUID" -o json | grep -o '"power_state": *"[^"]*"' | cut -d'"' -f4)
  virsh_state=$(virsh -c qemu:///system domstate "$UUID" 2>/dev/null) || virsh_state="(none)"
  virsh_state=${virsh_state%%$'\n'*}
  if [ "$power" = "$want_power" ] && [ "$virsh_state" = "$want_virsh" ]; then
    printf '  %-12s berth %-9s libvirt %-10s ok\n' "$step" "$power" "$virsh_state"
  else
    printf '  %-12s berth %-9s libvirt %-10s MISMATCH (want %s / %s)\n' "$step" "$power" "$virsh_state" "$want_power" "$want_virsh"
    fails=$((fails + 1))
  fi
}

echo "== driving $UUID on qemu:///system"
check create RUNNING running
b server stop "$UUID" >/dev/null;            check stop SHUTOFF "shut off"
b server start "$UUID" >/dev/null;           check start RUNNING running
b server pause "$UUID" >/dev/null;           check pause PAUSED paused
b server unpause "$UUID" >/dev/null;         check unpause RUNNING running
b server reboot "$UUID" >/dev/null;          check reboot RUNNING running
b server reboot --hard "$UUID" >/dev/null;   check reboot-hard RUNNING running
virsh -c qemu:///system dumpxml "$UUID" | grep -E "<domain |<memory|<vcpu" | sed 's/^/  /'
b server delete "$UUID" >/dev/null
if virsh -c qemu:///system dominfo "$UUID" >/dev/null 2>&1; then
  echo "  delete       domain still defined in libvirt  MISMATCH"; fails=$((fails + 1))
else
  echo "  delete       domain gone from libvirt         ok"
fi

kill "$NODE"; wait "$NODE" 2>/dev/null || true; NODE=
kill -TERM "$ENGINE"; wait "$ENGINE" || true
trap - EXIT
if [ "$fails" -gt 0 ]; then
  echo "FAILED: $fails mismatches (logs: $RUN/engine.log, $RUN/node.log)"
  exit 1
fi
echo "OK: every step matched on real QEMU (logs in $RUN/)"
