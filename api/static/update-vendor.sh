#!/usr/bin/env bash
# Refresh the vendored front-end files (shipped inside the package: no CDN at run time, no
# Node build step to install or run). Needs npm and network access to the npm registry.
#   api/static/update-vendor.sh [swagger-ui-dist version]
set -euo pipefail
cd "$(dirname "$0")"
version="${1:-5.35.0}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack "swagger-ui-dist@$version" --silent >/dev/null && tar xzf swagger-ui-dist-*.tgz)
for f in swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css LICENSE NOTICE; do
  cp "$tmp/package/$f" "swagger-ui/$f"
done
echo "$version" > swagger-ui/VERSION
