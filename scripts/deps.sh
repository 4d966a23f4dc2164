# Installs the system packages Berth needs when they are missing (Debian/Ubuntu).
ensure_deps() {
  local missing=()
  command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (https://rustup.rs)" >&2; exit 1; }
  command -v python3 >/dev/null || missing+=(python3)
  # tests/tests/python_client.rs runs scripts/grpc_python_check.sh, which makes a venv.
  { command -v python3 >/dev/null && python3 -c 'import ensurepip, venv' 2>/dev/null; } \
    || missing+=(python3-venv)
  # berth-node links libvirt through the `virt` crate, whose build script asks pkg-config.
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  if ! command -v pkg-config >/dev/null || ! pkg-config --exists libvirt; then
    missing+=(libvirt-dev)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}
