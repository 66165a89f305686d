#!/usr/bin/env bash
# Fuzzes the HTTP API from its own OpenAPI document with schemathesis: a server with
# authentication on, every operation but the endless subscription stream, and checks that no
# request gets a 5xx, that every response matches the document (status, content type, body
# schema, headers), that schema-violating requests are refused, and that a missing or wrong
# token is refused.
#
#   bash scripts/fuzz-http.sh            # the gate CI runs
#   bash scripts/fuzz-http.sh --all      # also report schema-valid requests the server refuses
#   FUZZ_EXAMPLES=200 bash scripts/fuzz-http.sh
#   FUZZ_SEED=$RANDOM bash scripts/fuzz-http.sh   # other inputs than CI's fixed seed
#
# schemathesis comes from PyPI into a virtual environment under target/. One worker: with two,
# this machine's CPython 3.11 fails inside schemathesis (an AST recursion-depth SystemError
# when two threads parse at once), which is the tool failing, not the server.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${ANNAL_FUZZ_VENV:-target/fuzz-venv}
version=4.32.5
installed=$("$venv/bin/schemathesis" --version 2>/dev/null || true)
if [[ "$installed" != *"$version"* ]]; then
  echo "== installing schemathesis $version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

echo "== building annal"
cargo build --quiet -p annal
annal=target/debug/annal

work=$(mktemp -d)
token="fuzz-write-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
"$annal" serve --data "$work/data" --listen 127.0.0.1:0 --write-token "$token" \
  >"$work/out" 2>"$work/server.log" &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do
  grep -q "annal serving on" "$work/out" 2>/dev/null && break
  sleep 0.1
done
addr=$(awk '/annal serving on/ {print $4}' "$work/out")
[ -n "$addr" ] || { echo "the server did not start:"; cat "$work/server.log"; exit 1; }

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection,ignored_auth,unsupported_method
[ "${1:-}" = "--all" ] && checks=all

echo "== fuzzing http://$addr/openapi.json (checks: $checks)"
status=0
"$venv/bin/schemathesis" run "http://$addr/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks "$checks" \
  --exclude-path-regex '^/v1/subscribe$|/consume$' \
  --max-examples "${FUZZ_EXAMPLES:-40}" \
  --seed "${FUZZ_SEED:-20261201}" \
  --workers 1 \
  --no-color \
  || status=$?
if grep -qE "ERROR|panicked" "$work/server.log"; then
  echo "== the server logged errors:"
  grep -E "ERROR|panicked" "$work/server.log" | head -20
  status=1
fi
exit "$status"
