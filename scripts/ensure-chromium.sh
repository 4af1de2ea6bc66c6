#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the dashboard's browser tests
# (tests/dashboard): a no-op when it is there, else `apt-get install chromium` (as root, or
# through `sudo -n`). Never downloads a browser of its own. Fails loudly when it cannot install.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
[ -x "$CHROMIUM" ] && exit 0

fail() {
  echo "ensure-chromium: $1" >&2
  echo "ensure-chromium: the dashboard tests need Debian's Chromium at $CHROMIUM;" \
    "install it with \`sudo apt-get install -y chromium\` and run again" >&2
  exit 1
}

command -v apt-get >/dev/null || fail "$CHROMIUM is missing and there is no apt-get to install it"
if [ "$(id -u)" = 0 ]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  fail "$CHROMIUM is missing and installing it needs root (no passwordless sudo)"
fi

echo "ensure-chromium: installing Debian's chromium (apt-get)" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "${sudo[@]}" apt-get update -qq \
  && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$log" 2>&1
then
  tail -n 20 "$log" >&2
  fail "apt-get could not install chromium (output above)"
fi
[ -x "$CHROMIUM" ] || fail "apt-get installed chromium, but $CHROMIUM is still missing"
