#!/usr/bin/env bash
# Renders a vitkit report.html in headless Chromium and saves a full-page screenshot, to check
# that the page opens in a real browser. Needs Debian's chromium (apt-get install chromium).
#   tools/render_report.sh runs/fm/report/report.html [screenshot.png] [height]
set -euo pipefail
html=$(realpath "$1")
png=${2:-${html%.html}.png}
height=${3:-6000}
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size=1200,"$height" \
  --screenshot="$png" "file://$html" 2>/dev/null
echo "screenshot: $png"
