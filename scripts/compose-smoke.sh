#!/usr/bin/env bash
# docker-compose, run for real, on a machine without Docker Hub (issue 16):
#   1. docker, compose and debootstrap (apt-get when missing), dockerd (started when not running)
#   2. local base images from Debian packages (deploy/local/base-images.sh; cached)
#   3. the optishear image from ./Dockerfile on the local Python base, with host networking and
#      this machine's CPU torch wheel (deploy/local/torch-index.py: never CUDA torch)
#   4. docker-compose.yml + deploy/local/compose.override.yml (local images, host network),
#      merged by `compose config` (published ports dropped: deploy/local/host-network.py), up -d
#   5. a search on a tiny random Llama through the REST API, polled until it succeeded
#   6. the export of its recommended candidate, downloaded and checked (a tar with safetensors)
#   7. down -v and cleanup, from a trap: on failure too (after printing the containers' logs)
#
#   sudo bash scripts/compose-smoke.sh          # from the repository root or anywhere
#
# Settings (environment): OPTISHEAR_SMOKE_WORK (scratch, default /var/tmp/optishear-smoke),
# OPTISHEAR_SMOKE_KEEP=1 (leave the stack up), OPTISHEAR_SMOKE_KEEP_DOCKERD=1 (leave a dockerd
# that this script started running), TORCH_WHEEL (the CPU torch wheel to install; default: found
# in pip's find-links folders, else the Dockerfile's own TORCH_INDEX is used),
# OPTISHEAR_SMOKE_SEARCH_TIMEOUT / _EXPORT_TIMEOUT (seconds, 900 / 600).
# Exit status 0 only when every step passed; the last lines are a table of step timings.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL="$REPO/deploy/local"
WORK=${OPTISHEAR_SMOKE_WORK:-/var/tmp/optishear-smoke}
PROJECT=${OPTISHEAR_SMOKE_PROJECT:-optishear-smoke}
PREFIX=${OPTISHEAR_LOCAL_PREFIX:-optishear-local}
IMAGE=${OPTISHEAR_SMOKE_IMAGE:-$PREFIX/optishear:latest}
TORCH_VERSION=2.13.0
SEARCH_TIMEOUT=${OPTISHEAR_SMOKE_SEARCH_TIMEOUT:-900}
EXPORT_TIMEOUT=${OPTISHEAR_SMOKE_EXPORT_TIMEOUT:-600}
export OPTISHEAR_SMOKE_IMAGE=$IMAGE OPTISHEAR_SMOKE_POSTGRES_IMAGE=$PREFIX/postgres:15

T0=$(date +%s)
STEP_NAMES=()
STEP_SECS=()
step_start=0
log() { printf '[smoke %4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
begin() { step_start=$(date +%s); log "== $*"; }
end() { STEP_NAMES+=("$1"); STEP_SECS+=("$(($(date +%s) - step_start))"); log "   $1: $(($(date +%s) - step_start))s"; }

mkdir -p "$WORK"
exec 9> "$WORK/lock"
flock -n 9 || die "another compose-smoke run holds $WORK/lock"

# --- 1. tools -------------------------------------------------------------------------------
begin "tools"
need=()
command -v docker > /dev/null || need+=(docker.io)
command -v dockerd > /dev/null || need+=(docker.io)
command -v debootstrap > /dev/null || need+=(debootstrap)
command -v curl > /dev/null || need+=(curl)
command -v python3 > /dev/null || need+=(python3)
if ! docker compose version > /dev/null 2>&1 && ! command -v docker-compose > /dev/null; then
  need+=(docker-compose)
fi
if ((${#need[@]})); then
  [[ $(id -u) == 0 ]] || die "missing ${need[*]}: run as root (apt-get install) or install them"
  log "apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" \
    > "$WORK/apt.log" 2>&1 || {
    apt-get update > /dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" \
      > "$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log" >&2; die "apt-get install"; }
  }
fi
if docker compose version > /dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
else
  COMPOSE_CMD=(docker-compose)
fi
COMPOSE=("${COMPOSE_CMD[@]}" -p "$PROJECT" -f "$REPO/docker-compose.yml" -f "$LOCAL/compose.override.yml")
log "compose: $("${COMPOSE_CMD[@]}" version 2>/dev/null | head -1 || true)"

STARTED_DOCKERD=
if ! docker info > /dev/null 2>&1; then
  # In a container sandbox dockerd may not manage iptables or a bridge; every container here
  # uses the host's network, so neither is needed.
  log "starting dockerd (log: $WORK/dockerd.log)"
  dockerd --iptables=false --ip6tables=false --bridge=none > "$WORK/dockerd.log" 2>&1 9>&- &
  STARTED_DOCKERD=$!
  for _ in $(seq 60); do
    docker info > /dev/null 2>&1 && break
    kill -0 "$STARTED_DOCKERD" 2> /dev/null || { tail -20 "$WORK/dockerd.log" >&2; die "dockerd exited"; }
    sleep 1
  done
  docker info > /dev/null 2>&1 || die "dockerd did not answer within 60 s"
fi
log "docker server $(docker version --format '{{.Server.Version}}')"
end tools

# --- teardown, from here on ------------------------------------------------------------------
INDEX_PID=
STATUS=failed
teardown() {
  local rc=$?
  set +e
  [[ -n $INDEX_PID ]] && kill "$INDEX_PID" 2> /dev/null && wait "$INDEX_PID" 2> /dev/null
  if [[ $rc != 0 && -n ${UP_DONE:-} ]]; then
    log "containers, and the last lines of their logs:"
    "${COMPOSE[@]}" ps -a >&2
    "${COMPOSE[@]}" logs --no-color --tail=40 >&2
  fi
  if [[ -n ${UP_DONE:-} && ${OPTISHEAR_SMOKE_KEEP:-0} != 1 ]]; then
    begin "down"
    "${COMPOSE[@]}" down -v --remove-orphans > "$WORK/down.log" 2>&1 || tail -20 "$WORK/down.log" >&2
    end down
  fi
  if [[ ${OPTISHEAR_SMOKE_KEEP:-0} != 1 ]]; then
    rm -rf "$WORK/data" "$WORK/out" "$WORK/index" "$WORK/download" "$WORK"/compose*.yml
  fi
  if [[ -n $STARTED_DOCKERD && ${OPTISHEAR_SMOKE_KEEP:-0} != 1 && ${OPTISHEAR_SMOKE_KEEP_DOCKERD:-0} != 1 ]]; then
    kill "$STARTED_DOCKERD" 2> /dev/null && wait "$STARTED_DOCKERD" 2> /dev/null
  fi
  log "timings:"
  for i in "${!STEP_NAMES[@]}"; do printf '  %-12s %6ss\n' "${STEP_NAMES[$i]}" "${STEP_SECS[$i]}" >&2; done
  printf '  %-12s %6ss\n' total "$(($(date +%s) - T0))" >&2
  [[ $rc == 0 ]] && STATUS=passed
  log "compose smoke test $STATUS"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

free_port() {  # the first port from $1 up on which nothing listens (loopback)
  local p=$1
  while (exec 3<> "/dev/tcp/127.0.0.1/$p") 2> /dev/null; do p=$((p + 1)); done
  echo "$p"
}

# --- 2. base images --------------------------------------------------------------------------
begin "base images"
bash "$LOCAL/base-images.sh"
end base-images

# --- 3. the optishear image ------------------------------------------------------------------
begin "image build"
find_torch_wheel() {
  [[ -n ${TORCH_WHEEL:-} ]] && { echo "$TORCH_WHEEL"; return; }
  local dirs=() d
  read -ra dirs <<< "${PIP_FIND_LINKS:-}"
  for conf in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
    [[ -f $conf ]] || continue
    while read -r d; do dirs+=("$d"); done < <(sed -n 's/^ *find-links *= *//p' "$conf" | tr ' ' '\n')
  done
  for d in "${dirs[@]}"; do
    d=${d#file://}
    compgen -G "$d/torch-$TORCH_VERSION+cpu-cp311-*.whl" > /dev/null && {
      ls "$d"/torch-"$TORCH_VERSION"+cpu-cp311-*.whl | head -1
      return
    }
  done
  return 0
}
BUILD_ARGS=(--build-arg "PYTHON_IMAGE=$PREFIX/python:3.11")
wheel=$(find_torch_wheel)
if [[ -n $wheel ]]; then
  [[ -f $wheel ]] || die "TORCH_WHEEL $wheel is not a file"
  rm -rf "$WORK/index"
  mkdir -p "$WORK/index"
  ln -s "$(readlink -f "$wheel")" "$WORK/index/$(basename "$wheel")"
  index_port=$(free_port 28080)
  python3 "$LOCAL/torch-index.py" "$WORK/index" "$index_port" > "$WORK/torch-index.log" 2>&1 9>&- &
  INDEX_PID=$!
  for _ in $(seq 50); do
    curl -fsS -o /dev/null "http://127.0.0.1:$index_port/simple/torch/" 2> /dev/null && break
    sleep 0.2
  done
  BUILD_ARGS+=(--build-arg "TORCH_INDEX=http://127.0.0.1:$index_port/simple")
  log "torch: $(basename "$wheel") (local index on 127.0.0.1:$index_port)"
else
  log "torch: no local CPU wheel found; the Dockerfile's TORCH_INDEX is used"
fi
# The build context is what git would commit (tracked and untracked, not ignored files that
# exist): a .venv or caches in the checkout are never sent to the daemon.
old_image=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2> /dev/null || true)
(cd "$REPO" && git ls-files -z -co --exclude-standard | python3 -c '
import os, sys
names = [n for n in sys.stdin.buffer.read().split(b"\0") if n and os.path.lexists(n)]
sys.stdout.buffer.write(b"\0".join(names) + b"\0")' | tar --null -T - -c) \
  | docker build --network host "${BUILD_ARGS[@]}" -t "$IMAGE" - > "$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log" >&2; die "docker build (log: $WORK/build.log)"; }
if [[ -n $INDEX_PID ]]; then
  kill "$INDEX_PID" 2> /dev/null; wait "$INDEX_PID" 2> /dev/null || true
  INDEX_PID=
  grep -q "GET /files/torch-" "$WORK/torch-index.log" || log "   (torch layer cached)"
fi
new_image=$(docker image inspect -f '{{.Id}}' "$IMAGE")
if [[ -n $old_image && $old_image != "$new_image" ]]; then
  docker image rm "$old_image" > /dev/null 2>&1 || true  # the previous build, now untagged
fi
docker run --rm --network none --entrypoint python "$IMAGE" -c \
  'import torch; v = torch.__version__; assert "+cpu" in v, v; print("torch", v)' >&2
log "   $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"
end image-build

# --- 4. up -----------------------------------------------------------------------------------
begin "up"
OPTISHEAR_SMOKE_PG_PORT=$(free_port 25432)
OPTISHEAR_SMOKE_RAY_PORT=$(free_port 26379)
OPTISHEAR_SMOKE_RAY_CLIENT_PORT=$(free_port 20001)
OPTISHEAR_SMOKE_RAY_DASHBOARD_PORT=$(free_port 28265)
OPTISHEAR_SMOKE_RAY_AGENT_PORT=$(free_port $((OPTISHEAR_SMOKE_RAY_DASHBOARD_PORT + 1)))
OPTISHEAR_SMOKE_API_PORT=$(free_port 28000)
export OPTISHEAR_SMOKE_PG_PORT OPTISHEAR_SMOKE_RAY_PORT OPTISHEAR_SMOKE_RAY_CLIENT_PORT \
  OPTISHEAR_SMOKE_RAY_DASHBOARD_PORT OPTISHEAR_SMOKE_RAY_AGENT_PORT OPTISHEAR_SMOKE_API_PORT
API_KEY="smoke-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export OPTISHEAR_API_KEYS=$API_KEY OPTISHEAR_ADMIN_KEYS=
# Ray listens on all interfaces on the host network: token authentication, a fresh token.
export OPTISHEAR_SMOKE_RAY_AUTH_MODE=token
OPTISHEAR_SMOKE_RAY_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export OPTISHEAR_SMOKE_RAY_TOKEN
export OPTISHEAR_SMOKE_DATA="$WORK/data" OPTISHEAR_SMOKE_OUT="$WORK/out"
API="http://127.0.0.1:$OPTISHEAR_SMOKE_API_PORT"
log "ports: postgres $OPTISHEAR_SMOKE_PG_PORT, ray $OPTISHEAR_SMOKE_RAY_PORT (client $OPTISHEAR_SMOKE_RAY_CLIENT_PORT), api $OPTISHEAR_SMOKE_API_PORT"

# A stack left by an interrupted run (same project name) goes first.
"${COMPOSE[@]}" down -v --remove-orphans > /dev/null 2>&1 || true
rm -rf "$WORK/data" "$WORK/out" "$WORK/download"
mkdir -p "$WORK/data" "$WORK/out" "$WORK/download"
docker run --rm --network none -v "$REPO/tests:/src/tests:ro" -v "$LOCAL:/src/deploy:ro" \
  -v "$WORK/data:/data" -e PYTHONPATH=/src -e PYTHONDONTWRITEBYTECODE=1 \
  --entrypoint python "$IMAGE" /src/deploy/make-tiny-model.py /data >&2 2> /dev/null \
  || die "making the tiny model"
# The users' file and the override, merged by compose itself; then, for docker-compose v1,
# without the published ports of host-network services (deploy/local/host-network.py).
"${COMPOSE[@]}" config > "$WORK/compose.merged.yml" 2> "$WORK/config.log" \
  || { cat "$WORK/config.log" >&2; die "compose config"; }
docker run --rm -i --network none --entrypoint python "$IMAGE" -c "$(cat "$LOCAL/host-network.py")" \
  < "$WORK/compose.merged.yml" > "$WORK/compose.yml" || die "rendering $WORK/compose.yml"
UP_DONE=1
COMPOSE=("${COMPOSE_CMD[@]}" -p "$PROJECT" -f "$WORK/compose.yml")
"${COMPOSE[@]}" up -d --no-build > "$WORK/up.log" 2>&1 \
  || { cat "$WORK/up.log" >&2; die "compose up"; }
deadline=$(($(date +%s) + 300))
until curl -fsS "$API/healthz" > /dev/null 2>&1; do
  (($(date +%s) < deadline)) || die "the API did not answer /healthz within 300 s"
  sleep 2
done
log "   /healthz answers"
# /readyz: the database and a runner's heartbeat (the worker joined the Ray head by then).
until curl -fsS "$API/readyz" > /dev/null 2>&1; do
  (($(date +%s) < deadline)) || die "/readyz not ready within 300 s: $(curl -sS "$API/readyz")"
  sleep 2
done
log "   /readyz answers"
"${COMPOSE[@]}" ps >&2
end up

# --- 5. a search -----------------------------------------------------------------------------
api() {  # METHOD PATH [JSON body]: prints the body, fails on a status >= 400
  local args=(-sS -X "$1" -H "X-API-Key: $API_KEY" -w '\n%{http_code}')
  [[ $# -ge 3 ]] && args+=(-H 'content-type: application/json' -d "$3")
  local out code
  out=$(curl "${args[@]}" "$API$2") || die "$1 $2: curl failed"
  code=${out##*$'\n'}
  out=${out%$'\n'*}
  ((code < 400)) || die "$1 $2: HTTP $code: $out"
  printf '%s' "$out"
}
field() { python3 -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if isinstance(v, list) else v.get(k) if v is not None else None
print("" if v is None else v)' "$1"; }

begin "search"
unauth=$(curl -s -o /dev/null -w '%{http_code}' "$API/api/searches")
[[ $unauth == 401 ]] || die "GET /api/searches without a key answered $unauth, not 401"
body=$(cat <<JSON
{"model": "/data/tiny-llama", "population": 4, "generations": 2, "stages": "metric",
 "metric_space": "first_order", "screen": {"rungs": "off"},
 "calibration": {"source": "/data/calib.txt", "n_samples": 4, "seq_len": 16},
 "evaluation": {"text": "/data/eval.txt", "seq_len": 32, "windows": 4}}
JSON
)
search=$(api POST /api/searches "$body")
SEARCH_ID=$(field id <<< "$search")
log "   search $SEARCH_ID: $(field status <<< "$search")"
deadline=$(($(date +%s) + SEARCH_TIMEOUT))
last=
while :; do
  search=$(api GET "/api/searches/$SEARCH_ID")
  status=$(field status <<< "$search")
  now="$status, generation $(field progress.generation <<< "$search")/$(field progress.total_generations <<< "$search")"
  [[ $now != "$last" ]] && log "   $now" && last=$now
  case $status in
    succeeded) break ;;
    failed | cancelled) die "search $status: $(field error <<< "$search")" ;;
  esac
  (($(date +%s) < deadline)) || die "search not finished within ${SEARCH_TIMEOUT}s ($status)"
  sleep 3
done
front=$(api GET "/api/searches/$SEARCH_ID/front")
log "   front: $(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["candidates"]))' <<< "$front") candidates, recommended $(field result.recommended_id <<< "$search")"
end search

# --- 6. the checkpoint -----------------------------------------------------------------------
begin "download"
ckpt=$(api POST "/api/searches/$SEARCH_ID/checkpoints" '{}')
CKPT_ID=$(field id <<< "$ckpt")
log "   checkpoint $CKPT_ID: $(field status <<< "$ckpt")"
deadline=$(($(date +%s) + EXPORT_TIMEOUT))
while :; do
  ckpt=$(api GET "/api/checkpoints/$CKPT_ID")
  status=$(field status <<< "$ckpt")
  case $status in
    succeeded) break ;;
    failed | cancelled) die "export $status: $(field error <<< "$ckpt")" ;;
  esac
  (($(date +%s) < deadline)) || die "export not finished within ${EXPORT_TIMEOUT}s ($status)"
  sleep 2
done
log "   exported: $(field size_bytes <<< "$ckpt") bytes, perplexity $(field perplexity <<< "$ckpt"), sparsity $(field sparsity <<< "$ckpt")"
archive="$WORK/download/checkpoint.tar"
code=$(curl -sS -H "X-API-Key: $API_KEY" -o "$archive" -w '%{http_code}' "$API/api/checkpoints/$CKPT_ID/download")
[[ $code == 200 ]] || die "download answered HTTP $code"
want=$(field sha256 <<< "$ckpt")
got=$(sha256sum "$archive" | cut -d' ' -f1)
[[ $got == "$want" ]] || die "archive sha256 $got, the API says $want"
[[ $(stat -c %s "$archive") == $(field size_bytes <<< "$ckpt") ]] || die "archive size differs from size_bytes"
listing=$(tar -tf "$archive") || die "the download is not a tar"
grep -q '\.safetensors$' <<< "$listing" || die "no .safetensors in the archive: $listing"
grep -q 'config\.json$' <<< "$listing" || die "no config.json in the archive: $listing"
mkdir -p "$WORK/download/x"
tar -xf "$archive" -C "$WORK/download/x"
python3 - "$WORK/download/x" <<'PY' || die "a .safetensors file does not parse"
import json, struct, sys
from pathlib import Path
for f in Path(sys.argv[1]).rglob("*.safetensors"):
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max(v["data_offsets"][1] for v in tensors.values())
    assert 8 + n + end == len(data), (f, 8 + n + end, len(data))
    print(f"  {f.name}: {len(tensors)} tensors, {len(data)} bytes", file=sys.stderr)
PY
log "   $(wc -l <<< "$listing") entries, sha256 $got"
end download

log "disk: $(docker system df --format '{{.Type}} {{.Size}}' | tr '\n' ';' | sed 's/;$//')"
