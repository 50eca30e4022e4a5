#!/usr/bin/env bash
# Installs the TypeScript MCP SDK and MCP Inspector at pinned versions into
# the directory given as $1 (kept between runs) and prints that directory.
# Exits non-zero when npm or the registry is unavailable; the tests then
# skip. One install at a time (flock); a failed install is not retried for
# 15 minutes, so a machine without network costs one timeout, not one per test.
set -euo pipefail
SDK=1.32.2
INSPECTOR=2.12.0
DIR="$1"
mkdir -p "$DIR"
exec 9>"$DIR/.install.lock"
flock 9
installed() {
  grep -q "\"version\": \"$2\"" "$DIR/node_modules/@modelcontextprotocol/$1/package.json" 2>/dev/null
}
if installed sdk "$SDK" && installed inspector "$INSPECTOR"; then
  echo "$DIR"; exit 0
fi
FAILED="$DIR/.install-failed"
if [ -f "$FAILED" ] && [ $(( $(date +%s) - $(stat -c %Y "$FAILED") )) -lt 900 ]; then
  echo "npm install failed less than 15 minutes ago; not retrying" >&2; exit 1
fi
command -v npm >/dev/null || { echo "npm is not installed" >&2; exit 1; }
if ! timeout 300 npm install --silent --no-audit --no-fund --prefix "$DIR" \
    "@modelcontextprotocol/sdk@$SDK" "@modelcontextprotocol/inspector@$INSPECTOR" >&2; then
  touch "$FAILED"; echo "npm install of the MCP SDK $SDK / Inspector $INSPECTOR failed" >&2; exit 1
fi
rm -f "$FAILED"
echo "$DIR"
