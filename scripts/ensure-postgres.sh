#!/usr/bin/env bash
# The service tests need the local PostgreSQL server (127.0.0.1:5432): start it if it is down.
set -uo pipefail
if ! command -v pg_isready >/dev/null; then
  # Without the client tools there is no local server to start: a developer's run skips the
  # PostgreSQL tests (they say so), a CI run must not pass without them.
  echo "ensure-postgres: pg_isready is missing: no local PostgreSQL server" >&2
  case "${CI:-}" in 1|true|yes) exit 1 ;; esac
  exit 0
fi
pg_isready -h 127.0.0.1 -p 5432 -q && exit 0
if command -v pg_ctlcluster >/dev/null; then
  cluster=$(pg_lsclusters -h 2>/dev/null | awk 'NR==1 {print $1, $2}')
  # shellcheck disable=SC2086
  pg_ctlcluster --skip-systemctl-redirect ${cluster:-15 main} start || true
fi
for _ in $(seq 1 20); do
  pg_isready -h 127.0.0.1 -p 5432 -q && exit 0
  sleep 0.5
done
echo "ensure-postgres: PostgreSQL at 127.0.0.1:5432 is not accepting connections" >&2
exit 1
