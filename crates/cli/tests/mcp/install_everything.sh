#!/usr/bin/env bash
# Installs the reference MCP server, @modelcontextprotocol/server-everything,
# at a pinned version into the directory given as $1 (kept between runs).
# Exits non-zero when npm or the registry is unavailable; the test then skips.
set -euo pipefail
VERSION=2026.8.31
DIR="$1"
ENTRY="$DIR/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
if [ -f "$ENTRY" ] && grep -q "\"version\": \"$VERSION\"" "$DIR/node_modules/@modelcontextprotocol/server-everything/package.json"; then
  echo "$ENTRY"; exit 0
fi
command -v npm >/dev/null || { echo "npm is not installed" >&2; exit 1; }
mkdir -p "$DIR"
timeout 300 npm install --silent --no-audit --no-fund --prefix "$DIR" "@modelcontextprotocol/server-everything@$VERSION" >&2
echo "$ENTRY"
