#!/usr/bin/env bash
# Smoke test of the main example: start the demo gateway with examples/gateway.toml, call
# it like a user would, verify the audit chain it wrote, stop it. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cargo build -q --example gateway --example audit_verify --features full
rm -f target/gateway-audit.jsonl* target/gateway-quota.redb
log=$(mktemp)
target/debug/examples/gateway --listen "127.0.0.1:$port" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
  grep -q "listening" "$log" && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.2
done
fail() { echo "smoke-gateway: $*"; cat "$log"; exit 1; }
grep -q "listening" "$log" || fail "gateway did not start"
read_key=$(sed -n 's/^  READ=//p' "$log")
write_key=$(sed -n 's/^  WRITE=//p' "$log")
base="http://127.0.0.1:$port"
expect() { # expect STATUS DESCRIPTION CURL_ARGS...
  local want=$1 what=$2; shift 2
  local got; got=$(curl -s -o /dev/null -w '%{http_code}' "$@")
  [ "$got" = "$want" ] || fail "$what: expected $want, got $got"
  echo "  ok $want $what"
}
expect 401 "no credentials" "$base/products"
expect 200 "read key on GET /products" -H "x-api-key: $read_key" "$base/products"
expect 403 "read key on POST /checkout (scope)" -H "x-api-key: $read_key" -X POST "$base/checkout"
expect 200 "write key on POST /checkout" -H "x-api-key: $write_key" -X POST "$base/checkout"
expect 400 "SQL injection in a query" -H "x-api-key: $read_key" "$base/products?q=1%27%20OR%201=1--"
expect 200 "quota usage read-back" -H "x-api-key: $write_key" "$base/admin/usage"
out=$(curl -s -D - -H 'X-Forwarded-For: 203.0.113.7' "$base/products")
echo "$out" | grep -q "^HTTP/1.1 403" || fail "denied client did not get 403: $out"
echo "$out" | grep -qi "^content-type: application/problem+json" || fail "no problem+json: $out"
echo "$out" | grep -q '"status":403' || fail "problem body missing status: $out"
echo "  ok 403 denied client IP, problem+json"
kill $pid; wait $pid 2>/dev/null || true
lines=$(wc -l < target/gateway-audit.jsonl)
[ "$lines" -ge 7 ] || fail "expected at least 7 audit records, found $lines"
target/debug/examples/audit_verify --key demo-only-audit-chain-key-change-me target/gateway-audit.jsonl \
  || fail "audit chain did not verify"
echo "smoke-gateway: ok ($lines audit records, chain verified)"
