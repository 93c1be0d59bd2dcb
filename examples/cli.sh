#!/usr/bin/env bash
# The CLI: submit and follow live (rich), print raw events for scripts, list jobs.
set -euo pipefail
export TOKENSPOOL_API_URL="${TOKENSPOOL_API_URL:-http://127.0.0.1:8000}"
tokenspool submit fake-reasoner "hello [fake chunks=8]" --follow
tokenspool submit fake-gpt "hello [fake chunks=3]" --follow --json | tail -n 1
tokenspool jobs --limit 3
