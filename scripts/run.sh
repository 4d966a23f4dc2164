#!/usr/bin/env bash
# Runs Berth: builds it, starts berth-engine on loopback and three berth-node compute nodes
# on libvirt's test driver (each a simulated host of its own size and availability zone),
# creates servers through them and drives their lifecycle with the CLI (stop, start, resize,
# evacuation of a killed node...), walks through placement (hosts, flavors, a server group,
# scheduling with its explanation, usage), then places 100,000 instances on a 10,000-host
# cloud over gRPC with berth-load and prints the summary. Secured as in production: TLS with
# a development CA (berth-engine cert init), node certificates (a node registers only as
# itself), the CLI and berth-load with the admin token the engine writes to its data
# directory; a member token shows what a project member may not do.
# Env: BERTH_PORT (default 50051), BERTH_METRICS_PORT (9090), DEMO_HOSTS (10k), DEMO_INSTANCES (100000).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
ensure_deps

echo "== building (release)"
cargo build --release --locked -p berth-engine -p berth-node -p berth-cli -p berth-load
BIN=target/release
PORT=${BERTH_PORT:-50051}
METRICS=${BERTH_METRICS_PORT:-9090}
LOG=target/berth-engine.log
RUN=target/run
DATA=$RUN/data
# A fresh cloud each run (the demo creates flavors and groups by name).
rm -rf "$DATA"
mkdir -p "$RUN"
# The engine keeps its state, token key and admin token here; the CLI and berth-load read
# the admin token from it (the same variable).
export BERTH_DATA_DIR="$PWD/$DATA"
PKI=$RUN/pki
echo "== a development CA, the engine's certificate and three node certificates in $PKI"
"$BIN/berth-engine" cert init --dir "$PKI" --nodes node-1,node-2,node-3 | grep -v '^wrote' || true
export BERTH_ENGINE="https://127.0.0.1:$PORT" BERTH_CA_CERT="$PWD/$PKI/ca.pem"

echo "== starting berth-engine on 127.0.0.1:$PORT, TLS (log: $LOG, metrics: http://127.0.0.1:$METRICS/metrics, data: $DATA)"
"$BIN/berth-engine" serve --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS" \
  --tls-cert "$PKI/engine.pem" --tls-key "$PKI/engine.key" --tls-client-ca "$PKI/ca.pem" >"$LOG" 2>&1 &
ENGINE=$!
NODES=()
cleanup() { kill "${NODES[@]}" $ENGINE 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do
  "$BIN/berth" host list >/dev/null 2>&1 && break
  kill -0 $ENGINE 2>/dev/null || { echo "berth-engine exited:"; cat "$LOG"; exit 1; }
  sleep 0.1
done

b() { echo "\$ berth $*"; "$BIN/berth" "$@"; echo; }
# start_node NAME AZ VCPUS MEMORY_MB: a berth-node on its own simulated libvirt test host,
# presenting its certificate.
start_node() {
  "$BIN/berth-node" --engine "$BERTH_ENGINE" --name "$1" --az "$2" \
    --ca-cert "$PKI/ca.pem" --tls-cert "$PKI/node-$1.pem" --tls-key "$PKI/node-$1.key" \
    --test-node-vcpus "$3" --test-node-memory-mb "$4" --test-node-disk-gb 500 \
    --test-node-file "$PWD/$RUN/$1.xml" --heartbeat-interval 1 >"$RUN/$1.log" 2>&1 &
  NODES+=($!)
}
echo "== starting three berth-node daemons on libvirt's test driver (logs: $RUN/node-*.log)"
start_node node-1 az-a 16 65536
start_node node-2 az-a 32 131072
start_node node-3 az-b 16 65536
for _ in $(seq 100); do
  [ "$("$BIN/berth" host list -o json 2>/dev/null | grep -c '"up": true')" -ge 3 ] && break
  sleep 0.1
done
b host list

echo "== servers on the compute nodes"
b flavor create m1.small --vcpus 1 --ram 2048 --disk 20
b flavor create m1.medium --vcpus 2 --ram 4096 --disk 40
b image create cirros --property hw_architecture=x86_64
b image create debian
b group create db --policy anti-affinity --project demo
b server create web --flavor m1.small --image cirros --count 4 --project demo
b server create db --flavor m1.medium --image debian --group db --count 2 --az az-a --project demo
WEB1=$("$BIN/berth" server list --project demo -o json | grep -m1 -B3 '"name": "web-1"' | grep -o '"uuid": "[^"]*"' | cut -d'"' -f4)
b server stop "$WEB1"
b server start "$WEB1"
b server pause "$WEB1"
b server unpause "$WEB1"
b server snapshot "$WEB1" --name web-1-snap
b server resize "$WEB1" --flavor m1.medium
b server confirm-resize "$WEB1"
b server show "$WEB1"
echo "\$ berth server live-migrate $WEB1   # the test driver cannot live-migrate"
"$BIN/berth" server live-migrate "$WEB1" || echo "(exit $? as expected)"
echo
b host disable node-3 --reason maintenance
b server create batch --flavor m1.small --image cirros --count 2 --project demo
b host enable node-3
echo "== killing node-3 (SIGKILL): it goes down after 3 missed heartbeats, then is evacuated"
{ kill -9 "${NODES[2]}"; wait "${NODES[2]}"; } 2>/dev/null || true
for _ in $(seq 100); do
  "$BIN/berth" host list -o json | grep -A12 '"name": "node-3"' | grep -q '"up": false' && break
  sleep 0.1
done
b host list
b host evacuate node-3
b server list --project demo
b usage --project demo

echo "== security: tokens and roles (the CLI above used the admin token in $BERTH_DATA_DIR)"
echo "\$ berth-engine token issue --project demo --role member --ttl 1h --subject alice"
MEMBER=$("$BIN/berth-engine" token issue --project demo --role member --ttl 1h --subject alice)
echo "\$ berth --token \$MEMBER server list        # a member sees its project's servers"
"$BIN/berth" --token "$MEMBER" server list | head -3
echo "\$ berth --token \$MEMBER host disable node-1   # but may not touch hosts"
"$BIN/berth" --token "$MEMBER" host disable node-1 || echo "(exit $? as expected)"
echo "\$ berth --token not-a-token host list"
"$BIN/berth" --token not-a-token host list || echo "(exit $? as expected)"
echo

echo "== placement without compute nodes: a small cloud through the CLI"
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

echo "== stopping the nodes and berth-engine (SIGTERM: finish in-flight calls, exit 0)"
kill -TERM "${NODES[0]}" "${NODES[1]}"
kill -TERM $ENGINE
wait $ENGINE
trap - EXIT
tail -n 3 "$LOG"
