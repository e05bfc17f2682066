#!/usr/bin/env bash
# Smoke test of the main example: start the demo gateway, check an allowed and a denied
# client, stop it. Used by .ci/run; runnable by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cargo build -q --example gateway --features full
log=$(mktemp)
target/debug/examples/gateway --listen "127.0.0.1:$port" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 50); do
  grep -q "listening" "$log" && break
  sleep 0.2
done
fail() { echo "smoke-gateway: $*"; cat "$log"; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/products")
[ "$code" = 200 ] || fail "allowed client got $code"
out=$(curl -s -D - -H 'X-Forwarded-For: 203.0.113.7' "http://127.0.0.1:$port/products")
echo "$out" | grep -q "^HTTP/1.1 403" || fail "denied client did not get 403: $out"
echo "$out" | grep -qi "^content-type: application/problem+json" || fail "no problem+json: $out"
echo "$out" | grep -q '"status":403' || fail "problem body missing status: $out"
echo "smoke-gateway: ok (200 for an allowed client, 403 problem+json for a denied one)"
