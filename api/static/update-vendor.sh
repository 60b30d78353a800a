#!/usr/bin/env bash
# Refresh the vendored front-end files (shipped inside the package: no CDN at run time, no
# Node build step to install or run). Needs npm and network access to the npm registry.
#   api/static/update-vendor.sh [swagger-ui-dist version] [uplot version]
set -euo pipefail
cd "$(dirname "$0")"
swagger="${1:-5.35.0}"
uplot="${2:-1.6.32}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fetch() {  # fetch <package> <version>: unpacks into $tmp/<package>
  mkdir -p "$tmp/$1"
  (cd "$tmp/$1" && npm pack "$1@$2" --silent >/dev/null && tar xzf ./*.tgz)
}

fetch swagger-ui-dist "$swagger"
for f in swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css LICENSE NOTICE; do
  cp "$tmp/swagger-ui-dist/package/$f" "swagger-ui/$f"
done
echo "$swagger" > swagger-ui/VERSION

# uPlot: the dashboard's charts (api/static/dashboard/charts.js).
fetch uplot "$uplot"
mkdir -p uplot
for f in dist/uPlot.iife.min.js dist/uPlot.min.css LICENSE; do
  cp "$tmp/uplot/package/$f" "uplot/$(basename "$f")"
done
echo "$uplot" > uplot/VERSION
