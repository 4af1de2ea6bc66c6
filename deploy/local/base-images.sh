#!/usr/bin/env bash
# Local stand-ins for the public base images, built from Debian packages (no Docker Hub):
#   optishear-local/debian:bookworm   debootstrap --variant=minbase, imported with docker import
#   optishear-local/python:3.11       + python3 (3.11 on bookworm) in a venv on PATH (python, pip)
#   optishear-local/postgres:15       + postgresql-15, an entrypoint that reads POSTGRES_USER,
#                                       POSTGRES_PASSWORD, POSTGRES_DB, PGDATA and PGPORT
# An image that exists already is kept (FORCE=1 rebuilds all three). Needs root, docker and
# debootstrap. Builds use host networking (apt reaches the Debian mirror from the host).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PREFIX=${OPTISHEAR_LOCAL_PREFIX:-optishear-local}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm
FORCE=${FORCE:-0}

have() { [[ $FORCE != 1 ]] && docker image inspect "$1" > /dev/null 2>&1; }
log() { printf '[base-images] %s\n' "$*" >&2; }

if have "$PREFIX/debian:$SUITE"; then
  log "$PREFIX/debian:$SUITE exists"
else
  rootfs=$(mktemp -d /var/tmp/optishear-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  log "debootstrap $SUITE (minbase) from $MIRROR into $rootfs"
  debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$rootfs" "$MIRROR" \
    > "$rootfs.log" 2>&1 || { tail -30 "$rootfs.log" >&2; exit 1; }
  rm -f "$rootfs.log"
  cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
SOURCES
  # Trust what this host trusts (a TLS-inspecting egress proxy's CA, say): pip inside the
  # image builds must reach PyPI the way the host does.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates > /dev/null 2>&1
  fi
  # As Docker's debian images: no apt caches in layers, no recommends.
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    > "$rootfs/etc/apt/apt.conf.d/90-no-recommends"
  chroot "$rootfs" apt-get clean
  rm -rf "${rootfs:?}"/var/lib/apt/lists/* "${rootfs:?}"/var/cache/apt/*.bin "${rootfs:?}"/dev/* \
    "${rootfs:?}"/proc/* "${rootfs:?}"/sys/* "${rootfs:?}"/tmp/* "${rootfs:?}"/var/log/*.log
  : > "$rootfs/etc/resolv.conf"
  : > "$rootfs/etc/hostname"
  log "docker import -> $PREFIX/debian:$SUITE"
  tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' \
    - "$PREFIX/debian:$SUITE" > /dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

build() {  # image dockerfile
  if have "$1"; then
    log "$1 exists"
    return
  fi
  log "docker build -> $1"
  local out
  out=$(mktemp)
  docker build --network host --build-arg "DEBIAN_IMAGE=$PREFIX/debian:$SUITE" \
    -t "$1" -f "$HERE/$2" "$HERE" > "$out" 2>&1 || { tail -30 "$out" >&2; rm -f "$out"; exit 1; }
  rm -f "$out"
}
build "$PREFIX/python:3.11" python.Dockerfile
build "$PREFIX/postgres:15" postgres.Dockerfile
log "done"
