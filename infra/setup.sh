#!/usr/bin/env bash
# Installs what Drover needs and is missing, and nothing else; safe to run again.
#   - redis-server and nats-server from Debian's packages (only when not found)
#   - chromium from Debian's packages (only when not found): the debug page's browser test drives
#     it with playwright-core, since browser downloads are not possible on these machines
#   - the npm dependencies from package-lock.json (npm ci, which also builds dist/)
# It does not start or stop any system service: Drover's demo, tests and benchmark start their
# own private servers on free ports unless REDIS_URL / NATS_URL are set.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/local/sbin/$1" ]; }

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  log "Node.js 20 or newer is required (found: $(node --version 2>/dev/null || echo none))"
  exit 1
fi

missing=()
have redis-server || missing+=(redis-server)
have nats-server || missing+=(nats-server)
have chromium || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]} from Debian's packages"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "redis-server, nats-server and chromium are installed"
fi

# npm ci only when node_modules does not match package-lock.json (it also runs the build).
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
stamp=node_modules/.drover-lock-hash
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_hash" ]; then
  log "installing npm dependencies (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_hash" > "$stamp"
else
  log "npm dependencies are up to date; building"
  npm run --silent build
fi
log "ready"
