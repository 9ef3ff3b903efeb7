#!/usr/bin/env bash
# The test command (README, .ci/run): the whole suite, with a Docker engine for the Docker sandbox
# backend's tests. Arguments go to pytest.
#   - An engine that already runs (`docker info` answers) is used as it is.
#   - Otherwise, where this machine can start one (root, and dockerd installed: scripts/setup.sh installs
#     docker.io), a private one is started for the run, on its own socket and folders, with gVisor
#     registered as its `runsc` runtime where runsc is installed; it is stopped and removed afterwards.
#   - Where the Docker backend can run a container (the check qllm itself makes), the Docker tests are
#     required (QLLM_REQUIRE_DOCKER=1: they fail rather than skip); elsewhere they skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[test] %s\n' "$*"; }

engine="" state=""

start_engine() {
  state=$(mktemp -d /tmp/qllm-dockerd.XXXXXX)
  trap stop_engine EXIT
  # gVisor as a runtime, with its own network stack off: containers run with --network none anyway,
  # and runsc refuses a network namespace the engine made without a bridge.
  local runsc
  runsc=$(command -v runsc || true)
  if [ -n "$runsc" ]; then
    printf '{"runtimes": {"runsc": {"path": "%s", "runtimeArgs": ["--network=none"]}}}\n' "$runsc"
  else
    printf '{}\n'
  fi >"$state/daemon.json"
  dockerd --config-file "$state/daemon.json" --iptables=false --ip-masq=false --bridge=none \
    --host "unix://$state/docker.sock" --data-root "$state/data" --exec-root "$state/exec" \
    --pidfile "$state/dockerd.pid" >"$state/dockerd.log" 2>&1 </dev/null &
  engine=$!
  export DOCKER_HOST="unix://$state/docker.sock"
  for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then log "started a Docker engine for the tests ($DOCKER_HOST)"; return; fi
    kill -0 "$engine" 2>/dev/null || break
    sleep 0.5
  done
  log "the Docker engine did not start; its log:"; tail -n 20 "$state/dockerd.log" >&2
}

stop_engine() {
  if [ -n "$engine" ] && kill "$engine" 2>/dev/null; then
    for _ in $(seq 1 40); do kill -0 "$engine" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$engine" 2>/dev/null || true  # still there after 20 s
  fi
  if [ -n "$state" ]; then
    # Whatever a hard stop left mounted under its folders (overlays, network namespaces), then the rest.
    grep -o " $state[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$state" 2>/dev/null || true
  fi
}

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null 2>&1; then
    start_engine
  else
    log "no Docker engine runs and none can be started here (needs root and docker.io): the Docker tests skip"
  fi
fi
docker_runs() {
  .venv/bin/python -c 'import sys; from qllm.sandbox.backends import DockerBackend
sys.exit(0 if DockerBackend().available() else 1)' 2>/dev/null
}
if docker info >/dev/null 2>&1; then
  if docker_runs; then
    export QLLM_REQUIRE_DOCKER=1
  else
    log "a Docker engine answers but cannot run the sandbox's container here: the Docker tests skip"
  fi
fi
.venv/bin/python -m pytest "$@"
