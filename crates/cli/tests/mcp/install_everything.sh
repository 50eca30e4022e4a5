#!/usr/bin/env bash
# Installs the reference MCP server, @modelcontextprotocol/server-everything,
# at a pinned version into the directory given as $1 (kept between runs) and
# prints its entry point. Exits non-zero when npm or the registry is
# unavailable; the tests then skip. Tests run in parallel: one install at a
# time (flock), and a failed install is not retried for 15 minutes, so a
# machine without network costs the suite one timeout, not one per test.
set -euo pipefail
VERSION=2026.8.31
DIR="$1"
PKG="$DIR/node_modules/@modelcontextprotocol/server-everything"
ENTRY="$PKG/dist/index.js"
mkdir -p "$DIR"
exec 9>"$DIR/.install.lock"
flock 9
if [ -f "$ENTRY" ] && grep -q "\"version\": \"$VERSION\"" "$PKG/package.json"; then
  echo "$ENTRY"; exit 0
fi
FAILED="$DIR/.install-failed"
if [ -f "$FAILED" ] && [ $(( $(date +%s) - $(stat -c %Y "$FAILED") )) -lt 900 ]; then
  echo "npm install failed less than 15 minutes ago; not retrying" >&2; exit 1
fi
command -v npm >/dev/null || { echo "npm is not installed" >&2; exit 1; }
if ! timeout 180 npm install --silent --no-audit --no-fund --prefix "$DIR" "@modelcontextprotocol/server-everything@$VERSION" >&2; then
  touch "$FAILED"; echo "npm install of server-everything@$VERSION failed" >&2; exit 1
fi
rm -f "$FAILED"
echo "$ENTRY"
