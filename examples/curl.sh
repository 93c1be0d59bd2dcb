#!/usr/bin/env bash
# Queue a job with curl, then read its events as SSE; resume after an id with Last-Event-ID.
set -euo pipefail
API="${TOKENSPOOL_API_URL:-http://127.0.0.1:8000}"

job=$(curl -sf "$API/v1/jobs" -H 'content-type: application/json' \
  -d '{"model": "fake-gpt", "messages": [{"role": "user", "content": "hello [fake chunks=8]"}]}')
id=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])' <<<"$job")
echo "job $id"

# the server closes the stream after the terminal event
curl -sfN "$API/v1/jobs/$id/events" | tee /tmp/tokenspool-example-$$.sse | grep '^event:'

# resume after the third event: exactly the rest arrives
third=$(grep '^id:' /tmp/tokenspool-example-$$.sse | sed -n 3p | cut -d' ' -f2 | tr -d '\r')
echo "resuming after $third"
curl -sfN "$API/v1/jobs/$id/events" -H "Last-Event-ID: $third" | grep -c '^event:'
rm -f /tmp/tokenspool-example-$$.sse
