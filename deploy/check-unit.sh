#!/usr/bin/env bash
# Checks deploy/callwarden.service: `systemd-analyze verify` (with ExecStart
# pointed at the binary built here, since /usr/bin/callwarden is not
# installed on a build machine) and the offline security exposure rating,
# which must be 1.5 or lower.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-target/debug/callwarden}
[ -x "$binary" ] || { echo "build the binary first: $binary" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|/usr/bin/callwarden|$(realpath "$binary")|" deploy/callwarden.service > "$tmp/callwarden.service"
systemd-analyze verify "$tmp/callwarden.service"
rating=$(systemd-analyze security --offline=yes "$tmp/callwarden.service" | awk '/Overall exposure level/ {print $(NF-2)}')
echo "exposure level: $rating"
awk -v r="$rating" 'BEGIN { exit !(r <= 1.5) }' || { echo "exposure $rating is above 1.5" >&2; exit 1; }
