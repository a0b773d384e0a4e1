#!/usr/bin/env bash
# Chaos test for restarts: a job whose worker is killed with SIGKILL at a
# random moment, restarted by `tandem launch --max-restarts 3` and resumed
# by `tandem train` from its newest valid checkpoint, must end with the
# same weights, bit for bit, as a job that was never interrupted.
#
#   tools/chaos.sh [N=10] [--nproc P=2]
#
# Runs one reference job (the MLP on Fashion-MNIST, 60 small steps, a
# checkpoint every 5, P ranks on Gloo), then N trials of the same job. Each
# trial picks a checkpoint step (or none: a kill during start-up), waits
# until that checkpoint exists, waits a random few milliseconds more, and
# kills one random worker with SIGKILL; its final model.safetensors must
# equal the reference's (cmp). Prints one line per trial and "K/N
# identical"; exits non-zero unless all are, or when no trial killed a
# worker (it would have tested nothing). CHAOS_SEED=S replays a run's
# random choices; TANDEM_BINARY picks the binary (default build/tandem).
# Every command runs under `timeout`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

trials=10
nproc=2
while [ $# -gt 0 ]; do
  case "$1" in
    --nproc|--nproc-per-node) nproc=${2:?--nproc needs a number}; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *[!0-9]*|'') echo "chaos.sh: unknown argument '$1' (usage: tools/chaos.sh [N] [--nproc P])" >&2; exit 2 ;;
    *) trials=$1; shift ;;
  esac
done
case "$nproc" in ''|*[!0-9]*|0) echo "chaos.sh: --nproc '$nproc': expected a positive number" >&2; exit 2 ;; esac

tandem=${TANDEM_BINARY:-$root/build/tandem}
if [ ! -x "$tandem" ]; then
  echo "chaos.sh: no tandem binary at $tandem; build first (tools/build.sh) or set TANDEM_BINARY" >&2
  exit 2
fi
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "chaos.sh: Fashion-MNIST is not installed (run tools/setup.sh)" >&2
  exit 2
fi

seed=${CHAOS_SEED:-$(( $(od -An -N2 -tu2 /dev/urandom) ))}
RANDOM=$seed
echo "chaos.sh: $trials trials, $nproc ranks, seed $seed (CHAOS_SEED=$seed replays the choices)"

work=$(mktemp -d "${TMPDIR:-/tmp}/tandem-chaos.XXXXXX")
job_pid=
cleanup() {
  if [ -n "$job_pid" ]; then kill -TERM "$job_pid" 2>/dev/null || true; wait "$job_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

kJobTimeout=300  # seconds for one job, restarts included
kWaitTimeout=60  # seconds for a trial's chosen checkpoint to appear
kSteps=60
kCkptEvery=5

# job DIR [launch flags...]: starts the job in the background (job_pid);
# its output goes to DIR/log, its checkpoints under DIR/ckpt.
job() {
  local dir=$1
  shift
  mkdir -p "$dir"
  timeout "$kJobTimeout" "$tandem" launch --nproc-per-node "$nproc" --backend gloo --master-port 0 "$@" -- \
    "$tandem" train --config models/mlp/fashion.toml --set max_steps=$kSteps --set ckpt_every=$kCkptEvery \
    --set mlp.hidden=[64] --set eval_every=1000 --set batch_size=32 --set log_every=$kCkptEvery \
    --ckpt-dir "$dir/ckpt" >"$dir/log" 2>&1 &
  job_pid=$!
}

# finish DIR: waits for the job; fails the script with its log when it failed.
finish() {
  local code=0
  wait "$job_pid" || code=$?
  job_pid=
  if [ "$code" != 0 ]; then
    echo "chaos.sh: the job in $1 exited with code $code; its log:" >&2
    tail -n 40 "$1/log" >&2
    return 1
  fi
}

final_model() { printf '%s/ckpt/step_%08d/model.safetensors' "$1" "$kSteps"; }

# The pids of the job's workers (`tandem train` with the job's --ckpt-dir,
# under whatever name the binary has; the launcher's own command line is
# `tandem launch`).
workers() { timeout 5 pgrep -f "^[^ ]*$(basename "$tandem") train .*--ckpt-dir $1/ckpt( |\$)" || true; }

ref="$work/reference"
job "$ref"
finish "$ref"
if [ ! -f "$(final_model "$ref")" ]; then
  echo "chaos.sh: the reference job wrote no $(final_model "$ref")" >&2
  exit 1
fi

identical=0
killed=0
for ((t = 1; t <= trials; t++)); do
  dir="$work/trial_$t"
  # A checkpoint step to wait for (0: none, a kill during start-up), then 0-29 ms more.
  target=$(( (RANDOM % (kSteps / kCkptEvery)) * kCkptEvery ))
  extra_ms=$(( RANDOM % 30 ))
  job "$dir" --max-restarts 3
  deadline=$(( SECONDS + kWaitTimeout ))
  if [ "$target" -gt 0 ]; then
    step_dir=$(printf '%s/ckpt/step_%08d' "$dir" "$target")
    while [ ! -d "$step_dir" ] && kill -0 "$job_pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.005; done
  fi
  sleep "$(printf '0.%03d' "$extra_ms")"
  victim=
  while [ -z "$victim" ] && kill -0 "$job_pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
    mapfile -t pids < <(workers "$dir")
    if [ "${#pids[@]}" -gt 0 ]; then victim=${pids[RANDOM % ${#pids[@]}]}; else sleep 0.005; fi
  done
  what="no worker left to kill"
  if [ -n "$victim" ]; then
    rank=$(tr '\0' '\n' </proc/"$victim"/environ 2>/dev/null | sed -n 's/^RANK=//p' || true)
    if kill -KILL "$victim" 2>/dev/null; then
      killed=$((killed + 1))
      when="$extra_ms ms after checkpoint $target"
      [ "$target" -gt 0 ] || when="$extra_ms ms into the job"
      what="killed rank ${rank:-?} (pid $victim) $when"
    else
      what="rank ${rank:-?} (pid $victim) had already ended"
    fi
  fi
  finish "$dir" || { echo "trial $t: $what; the job failed"; continue; }
  restarts=$(grep -c 'restarting the job' "$dir/log" || true)
  resumed=$(sed -n 's/.*resuming from .*(step \([0-9]*\)).*/\1/p' "$dir/log" | sort -un | paste -sd' ' -)
  [ "$restarts" = 0 ] || what="$what; $restarts restart(s), resumed at step(s) ${resumed:-none (from scratch)}"
  if cmp -s "$(final_model "$ref")" "$(final_model "$dir")"; then
    identical=$((identical + 1))
    echo "trial $t: $what; identical"
  else
    echo "trial $t: $what; DIFFERENT from the reference"
    cp "$dir/log" "${TMPDIR:-/tmp}/tandem-chaos-trial-$t.log" && echo "  (its log: ${TMPDIR:-/tmp}/tandem-chaos-trial-$t.log)"
  fi
done

echo "$identical/$trials identical ($killed of them with a worker killed)"
# A run that never killed anything tested nothing: that is a failure too.
if [ "$trials" -gt 0 ] && [ "$killed" = 0 ]; then
  echo "chaos.sh: no trial found a worker to kill (is TANDEM_BINARY's name what the workers run as?)" >&2
  exit 1
fi
[ "$identical" = "$trials" ]
