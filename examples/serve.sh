#!/usr/bin/env bash
# Serve a W4A16 checkpoint with `vllm serve --quantization machete` on loopback and send
# one OpenAI-compatible completion request with curl. Needs a CUDA GPU.
#   examples/serve.sh [MODEL_DIR]      (default: the tiny demo checkpoint, built on the fly)
# Optional load test afterwards with vLLM's own client (`vllm bench serve`, random data):
#   BENCH_PROMPTS=200 BENCH_CONCURRENCY=32 [BENCH_RESULT=file.json] examples/serve.sh
set -euo pipefail
PORT="${PORT:-8011}"
PY="${PYTHON:-python3}"
MODEL="${1:-}"
if [ -z "$MODEL" ]; then
  MODEL="$(mktemp -d)/tiny-llama-gptq"
  "$PY" -c "from vllm_machete_plugin.testing import build_tiny_checkpoint as b; b('$MODEL', 'gptq')"
fi
export VLLM_USE_FLASHINFER_SAMPLER=0
"$PY" -m vllm.entrypoints.cli.main serve "$MODEL" --quantization machete --host 127.0.0.1 --port "$PORT" \
  --max-model-len 1024 --gpu-memory-utilization "${GPU_MEMORY_UTILIZATION:-0.5}" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "vllm serve exited during startup" >&2; exit 1; }
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$MODEL\", \"prompt\": \"The quick brown fox\", \"max_tokens\": 16, \"temperature\": 0}"
echo
if [ -n "${BENCH_PROMPTS:-}" ]; then
  result="${BENCH_RESULT:-$(mktemp -d)/bench-serve.json}"
  "$PY" -m vllm.entrypoints.cli.main bench serve --backend vllm --model "$MODEL" --host 127.0.0.1 --port "$PORT" \
    --dataset-name random --random-input-len 128 --random-output-len 64 --ignore-eos \
    --num-prompts "$BENCH_PROMPTS" --max-concurrency "${BENCH_CONCURRENCY:-32}" --request-rate inf \
    --save-result --result-dir "$(dirname "$result")" --result-filename "$(basename "$result")"
fi
