#!/usr/bin/env bash
# Runs Berth: builds it, starts berth-engine on loopback, walks through the CLI (hosts,
# flavors, a server group, scheduling with its explanation, usage), then places 100,000
# instances on a 10,000-host cloud over gRPC with berth-load and prints the summary.
# Env: BERTH_PORT (default 50051), BERTH_METRICS_PORT (9090), DEMO_HOSTS (10k), DEMO_INSTANCES (100000).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
ensure_deps

echo "== building (release)"
cargo build --release --locked -p berth-engine -p berth-cli -p berth-load
BIN=target/release
PORT=${BERTH_PORT:-50051}
METRICS=${BERTH_METRICS_PORT:-9090}
export BERTH_ENGINE="http://127.0.0.1:$PORT"
LOG=target/berth-engine.log

echo "== starting berth-engine on 127.0.0.1:$PORT (log: $LOG, metrics: http://127.0.0.1:$METRICS/metrics)"
"$BIN/berth-engine" serve --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS" >"$LOG" 2>&1 &
ENGINE=$!
trap 'kill $ENGINE 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  "$BIN/berth" host list >/dev/null 2>&1 && break
  kill -0 $ENGINE 2>/dev/null || { echo "berth-engine exited:"; cat "$LOG"; exit 1; }
  sleep 0.1
done

b() { echo "\$ berth $*"; "$BIN/berth" "$@"; echo; }
echo "== a small cloud through the CLI"
b host create demo-a1 --az az-a --inventory VCPU=16,ratio=4.0 --inventory MEMORY_MB=65536,reserved=512 --inventory DISK_GB=1000 --trait HW_CPU_X86_AVX2
b host create demo-a2 --az az-a --inventory VCPU=32,ratio=4.0 --inventory MEMORY_MB=131072,reserved=512 --inventory DISK_GB=2000
b host create demo-b1 --az az-b --inventory VCPU=16,ratio=4.0 --inventory MEMORY_MB=65536,reserved=512 --inventory DISK_GB=1000 --trait HW_CPU_X86_AVX2
b flavor create m1.large --vcpus 4 --ram 8192 --disk 80
b flavor create m1.avx --vcpus 2 --ram 4096 --disk 20 --property trait:HW_CPU_X86_AVX2=required
b group create web --policy anti-affinity --project demo
b schedule --flavor m1.large --group web --count 3 --project demo
b schedule --flavor m1.avx --az az-a --project demo --dry-run
b usage
b group show web
echo "\$ berth schedule --flavor m1.large --group web --project demo   # a 4th anti-affine member cannot fit"
"$BIN/berth" schedule --flavor m1.large --group web --project demo || echo "(exit $? as expected)"
echo

echo "== berth-load: ${DEMO_INSTANCES:-100000} instances with AZs and server groups on ${DEMO_HOSTS:-10k} hosts, over gRPC"
"$BIN/berth-load" --engine "$BERTH_ENGINE" --scenario "groups-${DEMO_HOSTS:-10k}" --count "${DEMO_INSTANCES:-100000}"

echo "== stopping berth-engine (SIGTERM: finish in-flight calls, exit 0)"
kill -TERM $ENGINE
wait $ENGINE
trap - EXIT
tail -n 3 "$LOG"
