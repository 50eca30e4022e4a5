#!/usr/bin/env bash
# Installs panva's certified OpenID Provider, oidc-provider, at a pinned
# version into the directory given as $1 (kept between runs) and prints the
# directory holding node_modules. Exits non-zero when npm or the registry is
# unavailable; the tests then skip visibly. One install at a time (flock);
# a failed install is not retried for 15 minutes.
set -euo pipefail
VERSION=9.13.3
DIR="$1"
PKG="$DIR/node_modules/oidc-provider"
mkdir -p "$DIR"
exec 9>"$DIR/.install.lock"
flock 9
if [ -f "$PKG/package.json" ] && grep -q "\"version\": \"$VERSION\"" "$PKG/package.json"; then
  echo "$DIR"; exit 0
fi
FAILED="$DIR/.install-failed"
if [ -f "$FAILED" ] && [ $(( $(date +%s) - $(stat -c %Y "$FAILED") )) -lt 900 ]; then
  echo "npm install failed less than 15 minutes ago; not retrying" >&2; exit 1
fi
command -v npm >/dev/null || { echo "npm is not installed" >&2; exit 1; }
if ! timeout 180 npm install --silent --no-audit --no-fund --prefix "$DIR" "oidc-provider@$VERSION" >&2; then
  touch "$FAILED"; echo "npm install of oidc-provider@$VERSION failed" >&2; exit 1
fi
rm -f "$FAILED"
echo "$DIR"
