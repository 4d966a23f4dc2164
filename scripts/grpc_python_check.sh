#!/usr/bin/env bash
# Checks that a client in another language can use berth-engine knowing nothing but its
# address and a token: starts the engine on a free loopback port (its data directory, with
# the admin token it writes, in a temporary directory), then runs grpc_python_check.py,
# which builds every message from gRPC server reflection and calls Placement and Scheduler.
#
# The Python packages (grpcio, grpcio-reflection, protobuf, from PyPI) go into a venv that
# is kept between runs, under the cargo target dir by default.
#
# Environment:
#   BERTH_ENGINE_BIN  engine binary to run (default: cargo build -p berth-engine, debug)
#   BERTH_PY_VENV     venv directory (default: ${CARGO_TARGET_DIR:-target}/grpc-python-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target_dir=${CARGO_TARGET_DIR:-$root/target}
venv=${BERTH_PY_VENV:-$target_dir/grpc-python-venv}
# Known-good versions; a change here rebuilds the venv.
packages=(grpcio==1.85.3 grpcio-reflection==1.85.1 protobuf==7.36.2)

command -v python3 >/dev/null || { echo "grpc_python_check: python3 not found" >&2; exit 1; }

bin=${BERTH_ENGINE_BIN:-}
if [ -z "$bin" ]; then
  cargo build --quiet -p berth-engine --bin berth-engine
  bin=$target_dir/debug/berth-engine
fi
[ -x "$bin" ] || { echo "grpc_python_check: no engine binary at $bin" >&2; exit 1; }

stamp="$venv/.berth-packages"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${packages[*]}" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  PIP_ROOT_USER_ACTION=ignore "$venv/bin/pip" install --quiet --disable-pip-version-check \
    --no-input "${packages[@]}"
  echo "${packages[*]}" >"$stamp"
fi
py=$venv/bin/python

port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
log=$(mktemp)
data=$(mktemp -d)
# State in memory only; the data directory holds the token key and the admin token.
"$bin" serve --listen "$addr" --metrics-listen "" --log info --ephemeral --data-dir "$data" >"$log" 2>&1 &
pid=$!
cleanup() {
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$log" "$data"
}
trap cleanup EXIT

# The engine writes its admin token at start.
for _ in $(seq 200); do [ -s "$data/admin.token" ] && break; sleep 0.1; done
[ -s "$data/admin.token" ] || { echo "grpc_python_check: no $data/admin.token" >&2; cat "$log" >&2; exit 1; }
BERTH_TOKEN=$(cat "$data/admin.token")
export BERTH_TOKEN

# The Python side waits for the channel to be ready (20 s at most).
if ! "$py" scripts/grpc_python_check.py "$addr"; then
  echo "--- berth-engine log ---" >&2
  cat "$log" >&2
  exit 1
fi

# A clean stop: SIGTERM, exit status 0.
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
if [ "$status" -ne 0 ]; then
  echo "grpc_python_check: berth-engine exited with $status after SIGTERM" >&2
  cat "$log" >&2
  exit 1
fi
grep -q "berth-engine stopped" "$log" || { echo "grpc_python_check: no 'stopped' log line" >&2; cat "$log" >&2; exit 1; }
echo "grpc_python_check: berth-engine stopped cleanly"
