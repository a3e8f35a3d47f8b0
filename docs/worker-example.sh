#!/usr/bin/env bash
# A minimal external worker for kie serve (see docs/workers.md), in bash + curl + jq.
#
#   KIE_URL=http://127.0.0.1:8080 KIE_WORKER_TOKEN=… docs/worker-example.sh MODEL [MAX_TASKS]
#
# It serves MODEL by writing input.prompt in upper case into a text file, which becomes
# the task's result URL; a task without a prompt is failed with failCode 422.
# MAX_TASKS (default 0 = forever) makes it exit after that many tasks.
set -euo pipefail

model="${1:?usage: worker-example.sh MODEL [MAX_TASKS]}"
max="${2:-0}"
api="${KIE_URL:?set KIE_URL}/internal/v1/worker"
auth="Authorization: Bearer ${KIE_WORKER_TOKEN:?set KIE_WORKER_TOKEN}"
done_count=0

call() { # call PATH JSON
  curl -fsS -H "$auth" -H 'Content-Type: application/json' -d "$2" "$api$1"
}

while :; do
  # Long-poll: the server answers as soon as a task arrives, or with null after 20 s.
  task=$(call /claim "$(jq -cn --arg m "$model" '{models: [$m], waitMs: 20000, worker: "example-sh"}')" | jq -c '.data')
  [ "$task" = "null" ] && continue
  id=$(jq -r '.taskId' <<<"$task")
  prompt=$(jq -r '.input.prompt // ""' <<<"$task")
  if [ -z "$prompt" ]; then
    call "/tasks/$id/fail" '{"failCode":"422","failMsg":"input.prompt is required"}' >/dev/null
  else
    # The body is streamed into the store; the file becomes a result URL of the task.
    printf '%s\n' "${prompt^^}" |
      curl -fsS -H "$auth" -H 'Content-Type: text/plain' --data-binary @- \
        "$api/tasks/$id/files?name=answer.txt" >/dev/null
    # costCredits may be lower than the model's price (never higher is charged).
    call "/tasks/$id/complete" "$(jq -cn --arg p "$prompt" '{resultObject: {chars: ($p | length)}}')" >/dev/null
  fi
  done_count=$((done_count + 1))
  if [ "$max" -gt 0 ] && [ "$done_count" -ge "$max" ]; then
    exit 0
  fi
done
