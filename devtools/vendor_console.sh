#!/usr/bin/env bash
# Reproduces the console's vendored charting library (uPlot, MIT) from the npm registry:
# the minified browser build, its stylesheet and its licence, checked against the
# registry's integrity hash. Run from anywhere; needs npm and network access.
set -euo pipefail

VERSION=1.6.32
# the registry's sha512 for uplot-1.6.32.tgz (`npm view uplot@1.6.32 dist.integrity`)
INTEGRITY="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/src/tallygate/console/static/vendor/uplot"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cd "$WORK"
npm pack --silent "uplot@$VERSION" >/dev/null
TARBALL="uplot-$VERSION.tgz"
GOT="sha512-$(openssl dgst -sha512 -binary "$TARBALL" | base64 -w0)"
if [ "$GOT" != "$INTEGRITY" ]; then
  echo "uplot $VERSION: integrity mismatch (got $GOT)" >&2
  exit 1
fi
tar xzf "$TARBALL"
mkdir -p "$DEST"
cp package/dist/uPlot.iife.min.js package/dist/uPlot.min.css package/LICENSE "$DEST/"
echo "$VERSION" >"$DEST/VERSION"
echo "uplot $VERSION -> $DEST"
