#!/usr/bin/env bash
# `make run`: localtgi (SmolLM2-135M on CPU) on 127.0.0.1:8080 and the container on 127.0.0.1:3000,
# wired together. Ctrl-C stops both. Override with LOCALTGI_MODEL, LOCALTGI_PORT, CONTAINER_PORT and any
# TGI_INF_* setting (TGI_INF_WORKFLOW_KW_ARGS replaces the default below). LOCALTGI_ARGS adds flags to
# localtgi; its default, `--exact`, runs float32 activations: answers match a float run of the same 4-bit
# weights, at the cost of throughput when many streams decode together (set it to "" for int8 activations).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"  # the venv `make deps` fills; PYTHON overrides (tests)
MODEL="${LOCALTGI_MODEL:-smollm2}"
TGI_PORT="${LOCALTGI_PORT:-8080}"
PORT="${CONTAINER_PORT:-3000}"

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

wait_for() {  # url, name, pid, seconds
  local deadline=$((SECONDS + $4))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if ! kill -0 "$3" 2>/dev/null; then echo "$2 exited; see its output above" >&2; exit 1; fi
    if [ $SECONDS -ge "$deadline" ]; then echo "$2 did not become ready in $4 s" >&2; exit 1; fi
    sleep 0.3
  done
}

read -r -a EXTRA <<< "${LOCALTGI_ARGS---exact}"
$PY -m localtgi --model-id "$MODEL" --hostname 127.0.0.1 --port "$TGI_PORT" "${EXTRA[@]}" &
pids+=($!)
# The first run converts SmolLM2's GGUF into a local cache (progress above); later starts take seconds.
wait_for "http://127.0.0.1:$TGI_PORT/health" localtgi "${pids[0]}" 600

# SmolLM2 is an instruct model: text prompts go in as one user turn of its chat template.
# The default lives in its own variable: a `}` inside `${VAR:-...}` would end the expansion early and
# append a stray `}` to any value the user sets.
DEFAULT_KW_ARGS='{"max_new_tokens": 64, "do_sample": false}'
TGI_INF_WORKFLOW_POSITIONAL_ARGS="[\"http://127.0.0.1:$TGI_PORT\", 60]" \
TGI_INF_WORKFLOW_KW_ARGS="${TGI_INF_WORKFLOW_KW_ARGS:-$DEFAULT_KW_ARGS}" \
TGI_INF_PROMPT_AS_CHAT="${TGI_INF_PROMPT_AS_CHAT:-true}" \
  $PY -m infernet_tgi --host 127.0.0.1 --port "$PORT" &
pids+=($!)
wait_for "http://127.0.0.1:$PORT/" infernet-tgi "${pids[1]}" 30

cat <<TXT

ready: container http://127.0.0.1:$PORT  ->  localtgi http://127.0.0.1:$TGI_PORT ($MODEL)
try:
  curl -s http://127.0.0.1:$PORT/service_output -H 'content-type: application/json' \\
    -d '{"source": 1, "destination": 1, "data": {"text": "What is the capital of France?"}}'
Ctrl-C stops both.
TXT
wait -n "${pids[@]}"
