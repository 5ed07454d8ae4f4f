#!/usr/bin/env bash
# The baseline for bench/init.ts: what a team writes without the agent. Exchanges the projected
# token with curl, then reads each secret of SECRETS with one GET and writes `.data` with jq
# through a temporary file and mv. Needs SCAIVAULT_URL, SCAIVAULT_TOKEN_FILE, SECRETS, OUT_DIR.
set -euo pipefail

token=$(curl -sf -X POST "$SCAIVAULT_URL/v1/auth/exchange" \
  -H 'content-type: application/json' \
  --data "{\"subject_token\":\"$(cat "$SCAIVAULT_TOKEN_FILE")\",\"subject_token_type\":\"urn:ietf:params:oauth:token-type:jwt\"}" |
  jq -r .access_token)

while read -r path _arrow file; do
  [ -z "$path" ] && continue
  target="$OUT_DIR/$(basename "$file")"
  curl -sf -H "authorization: Bearer $token" "$SCAIVAULT_URL/v1/secrets/$path" | jq .data >"$target.tmp"
  mv "$target.tmp" "$target"
done <<<"$SECRETS"
