#!/bin/bash
# One rollout node's part of a disaggregated run, started by train.sbatch (RLVR_ROLLOUT_NODES > 0)
# through `srun`, one task per rollout node. It starts RLVR_WORKERS_PER_NODE rollout workers,
# each `rlvr serve RECIPE [key=value ...]` (the recipe's model and rollout.vllm settings): worker i
# listens on port RLVR_SERVE_PORT + i and, on a GPU node, sees GPUs i*TP .. i*TP + TP - 1 where
# TP = RLVR_WORKER_GPUS (its tensor parallelism). It returns when every worker has exited.
#
# Needs: RLVR_WORKERS_PER_NODE, RLVR_PYTHON (exported by train.sbatch). Optional: RLVR_SERVE_PORT
# (default 8100), RLVR_WORKER_GPUS (default 1; 0 on a node without GPUs), RLVR_WORKER_LOG_DIR
# (each worker's output in its own file there; default: the job's output), RLVR_DRY_RUN=1.
set -euo pipefail

: "${RLVR_WORKERS_PER_NODE:?}"
PY=${RLVR_PYTHON:-python3}
PORT0=${RLVR_SERVE_PORT:-8100}
TP=${RLVR_WORKER_GPUS:-1}

# The time-limit signal (SIGUSR1 to every process of the job) is the learner's: it checkpoints at
# the end of its step, and the workers must keep answering until then. An ignored signal stays
# ignored in the servers. train.sbatch stops the workers with SIGTERM once the learner has ended.
trap '' USR1

pids=()
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; }
trap stop TERM INT
for ((i = 0; i < RLVR_WORKERS_PER_NODE; i++)); do
    cmd=("$PY" -m rlvr.cli serve "$@" --port "$((PORT0 + i))")
    devices=
    if ((TP > 0)); then
        devices=$(seq -s, "$((i * TP))" "$((i * TP + TP - 1))")
        cmd+=(--tensor-parallel-size "$TP")
    fi
    [[ -n ${RLVR_WORKER_LOG_DIR:-} ]] && cmd+=(--log-dir "$RLVR_WORKER_LOG_DIR")
    echo "rlvr: rollout node $(hostname -s) worker $i${devices:+ (GPUs $devices)}: ${cmd[*]}"
    [[ ${RLVR_DRY_RUN:-0} == 1 ]] && continue
    if [[ -n $devices ]]; then
        CUDA_VISIBLE_DEVICES=$devices "${cmd[@]}" &
    else
        "${cmd[@]}" &
    fi
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
done
wait  # a wait cut short by SIGTERM: the workers are still shutting down
exit "$status"
