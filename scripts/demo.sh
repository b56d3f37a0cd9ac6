#!/usr/bin/env bash
# The main job: build, then move 100 MB of random bytes through toudtls-cat over loopback with DTLS
# and check them with sha256. Usage: scripts/demo.sh [MEGABYTES] [HOST]
set -euo pipefail
cd "$(dirname "$0")/.."
megabytes=${1:-100}
host=${2:-127.0.0.1}

if ! pkg-config --exists openssl 2>/dev/null; then
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y libssl-dev pkg-config
fi
swift build -c release
bin=$(swift build -c release --show-bin-path)

work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
head -c "${megabytes}M" /dev/urandom > "$work/in"

"$bin/toudtls-cat" -l -v --cert certs/server.pem --key certs/server.key "$host" 0 \
    > "$work/out" 2> "$work/server.log" &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done
port=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$work/server.log" | head -1)

start=$(date +%s.%N)
"$bin/toudtls-cat" -v --ca certs/ca.pem --server-name localhost "$host" "$port" < "$work/in"
wait $server
end=$(date +%s.%N)

sent=$(sha256sum < "$work/in" | cut -d' ' -f1)
got=$(sha256sum < "$work/out" | cut -d' ' -f1)
echo "sent     $sent"
echo "received $got"
awk -v mb="$megabytes" -v s="$start" -v e="$end" 'BEGIN { printf "%d MB in %.2f s (%.1f MB/s)\n", mb, e - s, mb * 1.048576 / (e - s) }'
[ "$sent" = "$got" ] && echo "OK: intact"
