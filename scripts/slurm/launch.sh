#!/bin/bash
# One node's part of a multi-node rlvr run, started by train.sbatch through `srun` (one task per
# node). It starts RLVR_NPROC_PER_NODE processes that join the c10d rendezvous at
# RLVR_HEAD:RLVR_PORT, where RLVR_NNODES nodes meet; each process runs `rlvr train "$@"`.
#
# Needs: RLVR_HEAD, RLVR_PORT, RLVR_NNODES, RLVR_NPROC_PER_NODE, RLVR_PYTHON (exported by
# train.sbatch), SLURM_JOB_ID and SLURM_NODEID (set by srun). Optional: RLVR_LAUNCHER,
# RLVR_ACCELERATE_CONFIG, RLVR_RDZV_TIMEOUT (seconds the first node waits for the others, default
# 900), RLVR_DRY_RUN=1 (print the command only).
set -euo pipefail

: "${RLVR_HEAD:?}" "${RLVR_PORT:?}" "${RLVR_NNODES:?}" "${RLVR_NPROC_PER_NODE:?}"
PY=${RLVR_PYTHON:-python3}
NODE_RANK=${SLURM_NODEID:-0}
RDZV_ID=${SLURM_JOB_ID:-rlvr}
TIMEOUT=${RLVR_RDZV_TIMEOUT:-900}

case ${RLVR_LAUNCHER:-torchrun} in
    torchrun)
        # c10d: the agent on RLVR_HEAD hosts the store, the others connect; node ranks are assigned
        # at the rendezvous. No restarts inside the job: Slurm requeues, rlvr resumes.
        CMD=("$PY" -m torch.distributed.run
             --nnodes="$RLVR_NNODES" --nproc-per-node="$RLVR_NPROC_PER_NODE"
             --rdzv-backend=c10d --rdzv-endpoint="$RLVR_HEAD:$RLVR_PORT" --rdzv-id="$RDZV_ID"
             --rdzv-conf="join_timeout=$TIMEOUT" --max-restarts=0
             -m rlvr.cli train "$@")
        ;;
    accelerate)
        # the config file picks the strategy (learner.strategy=auto follows it); the rest is the job's shape
        CMD=("$PY" -m accelerate.commands.launch)
        if [[ -n ${RLVR_ACCELERATE_CONFIG:-} ]]; then
            CMD+=(--config_file "$RLVR_ACCELERATE_CONFIG")
        elif (( RLVR_NNODES * RLVR_NPROC_PER_NODE > 1 )); then
            CMD+=(--multi_gpu)    # without a config, accelerate would start a single process on some shapes
        fi
        CMD+=(--num_machines "$RLVR_NNODES" --num_processes "$((RLVR_NNODES * RLVR_NPROC_PER_NODE))"
              --machine_rank "$NODE_RANK" --main_process_ip "$RLVR_HEAD" --main_process_port "$RLVR_PORT"
              --rdzv_backend c10d --same_network --max_restarts 0
              -m rlvr.cli train "$@")
        ;;
    *)
        echo "launch.sh: RLVR_LAUNCHER must be torchrun or accelerate, got '${RLVR_LAUNCHER}'" >&2
        exit 2
        ;;
esac

# Stopping: before the time limit train.sbatch sends SIGUSR1 to every process of the job step.
# rlvr's processes handle it (checkpoint at the end of the step, then exit). torchrun must not die
# of it: it ignores it (inherited from here), or, where torchrun supports it (torch >= 2.9,
# PET_SIGNALS_TO_HANDLE), relays it to its workers, which covers clusters whose Slurm reaches only
# the launcher. For SIGTERM/SIGINT/SIGUSR1 torchrun kills its workers after
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (default 30): allow a step plus a checkpoint instead.
trap '' USR1
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}

echo "rlvr: node $NODE_RANK ($(hostname -s)): ${CMD[*]}"
if [[ ${RLVR_DRY_RUN:-0} == 1 ]]; then
    exit 0
fi
exec "${CMD[@]}"
