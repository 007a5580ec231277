#!/bin/bash
# Run train.sbatch on this machine as if Slurm had started it: one "node" (localhost), stand-ins
# for scontrol and srun on PATH, and RLVR_NPROC_PER_NODE processes (default 2) over gloo on CPU.
# It exercises the batch script, the launcher, the c10d rendezvous and rlvr's multi-process
# path; it cannot show anything about NCCL, GPUs or a second host.
#
#   scripts/slurm/fake_slurm.sh                         # tiny quickstart, 2 steps, 2 processes
#   scripts/slurm/fake_slurm.sh recipes/quickstart.yaml run.steps=3 run.output_dir=/tmp/x
#
# With no arguments it trains recipes/quickstart.yaml for 2 steps into a temporary folder and
# checks that metrics.jsonl has steps 1 and 2. FAKE_SLURM_SIGNAL_AFTER=S sends SIGUSR1 to the batch
# shell after S seconds (FAKE_SLURM_SIGNAL_WHEN=PATH: once PATH is a non-empty file), as Slurm's
# --signal=B:USR1 does before the time limit. The batch script passes it on with
# `scancel --signal=USR1` (the fake one signals every process under the fake srun, as Slurm signals
# every process of the step), rlvr checkpoints and stops, the batch script calls `scontrol requeue`, the
# fake one ends the job, and the job is started again once (SLURM_RESTART_COUNT=1), which resumes
# from that checkpoint.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FAKE_SLURM_DIR=${FAKE_SLURM_DIR:-$(mktemp -d -t fake-slurm-XXXXXX)}
export FAKE_SLURM_DIR
mkdir -p "$FAKE_SLURM_DIR/bin"

cat > "$FAKE_SLURM_DIR/bin/scontrol" <<'EOF'
#!/bin/bash
# scontrol stand-in: `show hostnames a,b` (no bracket ranges) and `requeue JOBID`
case "$1 ${2:-}" in
    "show hostnames") tr ',' '\n' <<< "$3" ;;
    "requeue "*)  # like Slurm: record it, then end the job (SIGTERM to the batch shell)
        echo "fake scontrol: requeue $2" >&2; echo "$2" >> "$FAKE_SLURM_DIR/requeued"
        kill -TERM "$(cat "$FAKE_SLURM_DIR/batch.pid")" ;;
    *) echo "fake scontrol: unsupported: $*" >&2; exit 1 ;;
esac
EOF
cat > "$FAKE_SLURM_DIR/bin/srun" <<'EOF'
#!/bin/bash
# srun stand-in: one task per "node" of --nodes (default 1), all on this machine, each with its
# SLURM_NODEID; srun's other options are dropped. It waits for its tasks, and passes SIGTERM on.
nodes=1
while [[ $# -gt 0 && $1 == -* ]]; do
    case $1 in --nodes=*) nodes=${1#--nodes=} ;; esac
    shift
done
echo $$ >> "$FAKE_SLURM_DIR/steps.pids"
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
for ((n = 0; n < nodes; n++)); do
    SLURM_NODEID=$n SLURM_PROCID=$n SLURM_LOCALID=0 "$@" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
wait
exit "$status"
EOF
cat > "$FAKE_SLURM_DIR/bin/scancel" <<'EOF'
#!/bin/bash
# scancel stand-in: `scancel --signal=SIG JOBID` signals every process of the job's steps, as Slurm
# does through the steps' cgroups, whatever their session (torchrun starts workers in new ones)
[[ ${1:-} == --signal=* && -s $FAKE_SLURM_DIR/steps.pids ]] || { echo "fake scancel: unsupported: $*" >&2; exit 1; }
sig=${1#--signal=}
pids=$(ps -eo pid=,ppid= | awk -v roots="$(tr '\n' ' ' < "$FAKE_SLURM_DIR/steps.pids")" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) root[r[i]] = 1 }
    { parent[$1] = $2 }
    END { for (p in parent) { q = p; while (!(q in root) && q in parent) q = parent[q]; if (q in root) print p } }')
echo "fake scancel: SIG$sig to the job steps' processes" $pids >&2
# shellcheck disable=SC2086
kill -s "$sig" $pids 2>/dev/null || true
EOF
chmod +x "$FAKE_SLURM_DIR/bin/scontrol" "$FAKE_SLURM_DIR/bin/srun" "$FAKE_SLURM_DIR/bin/scancel"

default_run=0
if [[ $# -eq 0 ]]; then
    default_run=1
    OUT=$FAKE_SLURM_DIR/run
    set -- recipes/quickstart.yaml run.steps=2 "run.output_dir=$OUT" "model.path=$FAKE_SLURM_DIR/tiny-digits" \
        eval.at_start=false eval.every=0 metrics.sinks=[jsonl] metrics.plot=false
fi

export PATH=$FAKE_SLURM_DIR/bin:$PATH
# FAKE_SLURM_NODES=N: a job of N "nodes", every one this machine (RLVR_ROLLOUT_NODES may take some)
FAKE_SLURM_NODES=${FAKE_SLURM_NODES:-1}
export SLURM_JOB_ID=${SLURM_JOB_ID:-424242} SLURM_NNODES=$FAKE_SLURM_NODES
SLURM_JOB_NODELIST=$(printf 'localhost,%.0s' $(seq "$FAKE_SLURM_NODES")); export SLURM_JOB_NODELIST=${SLURM_JOB_NODELIST%,}
export SLURM_SUBMIT_DIR=$ROOT SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-0}
export RLVR_NPROC_PER_NODE=${RLVR_NPROC_PER_NODE:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [[ ${FAKE_SLURM_GPU:-0} != 1 ]]; then
    export CUDA_VISIBLE_DEVICES=""                   # CPU and gloo; FAKE_SLURM_GPU=1 keeps this box's GPUs (NCCL)
fi

bash "$ROOT/scripts/slurm/train.sbatch" "$@" &
batch_pid=$!
echo "$batch_pid" > "$FAKE_SLURM_DIR/batch.pid"
if [[ -n ${FAKE_SLURM_SIGNAL_AFTER:-} || -n ${FAKE_SLURM_SIGNAL_WHEN:-} ]]; then
    (
        if [[ -n ${FAKE_SLURM_SIGNAL_WHEN:-} ]]; then
            while [[ ! -s $FAKE_SLURM_SIGNAL_WHEN ]] && kill -0 "$batch_pid" 2>/dev/null; do sleep 0.2; done
        else
            sleep "$FAKE_SLURM_SIGNAL_AFTER"
        fi
        echo "fake_slurm: SIGUSR1 to the batch shell, as --signal=B:USR1 before the time limit"
        kill -USR1 "$batch_pid" 2>/dev/null || true
    ) &
fi
status=0
wait "$batch_pid" || status=$?
if [[ -s $FAKE_SLURM_DIR/requeued ]]; then   # the job asked to be requeued: start it again, as Slurm would
    echo "fake_slurm: job ended with $status after a requeue request; starting it again"
    rm -f "$FAKE_SLURM_DIR/requeued" "$FAKE_SLURM_DIR/steps.pids"
    status=0
    SLURM_RESTART_COUNT=$((SLURM_RESTART_COUNT + 1)) bash "$ROOT/scripts/slurm/train.sbatch" "$@" &
    batch_pid=$!
    echo "$batch_pid" > "$FAKE_SLURM_DIR/batch.pid"
    wait "$batch_pid" || status=$?
fi
[[ $status == 0 ]] || { echo "fake_slurm: train.sbatch exited with $status" >&2; exit "$status"; }

if [[ $default_run == 1 ]]; then
    "${RLVR_PYTHON:-$ROOT/.venv/bin/python}" - "$OUT/metrics.jsonl" <<'EOF'
import json, sys
steps = sorted({r["step"] for r in map(json.loads, open(sys.argv[1])) if "perf/step_s" in r})
assert steps == [1, 2], f"expected steps [1, 2] in {sys.argv[1]}, got {steps}"
print(f"fake_slurm: ok, {sys.argv[1]} has steps {steps}")
EOF
fi
