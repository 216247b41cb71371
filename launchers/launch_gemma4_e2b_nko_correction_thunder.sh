#!/usr/bin/env bash
# One training window: build the JSON hostfile (ssh names, data IPs) and the window's spec from
# the inventory, then run mlx.launch with the profile's backend (ring or jaccl), the hosts' absolute --python and
# HF_HUB_OFFLINE=1 (a cold cache fails at once instead of starting a download).
# Runs on macOS bash 3.2 with BSD tools.
set -euo pipefail

EX_USAGE=64   # bad arguments
EX_PLAN=78    # the window could not be planned (inventory, profile, host unreachable)
# any other non-zero code is mlx.launch's (the first failing rank's)

usage() {
  cat >&2 <<'USAGE'
usage: launch_gemma4_e2b_nko_correction_thunder.sh PROFILE TO_STEP [TARGET_STEP]
  Train PROFILE from its committed step to TO_STEP in one window across the profile's hosts.
  env: THUNDER_INVENTORY (default: hosts.yaml), THUNDER_PYTHON (default: .venv/bin/python),
       THUNDER_PLAN_ROOT (where the window's plan folder is made and kept; default: $TMPDIR),
       THUNDER_PLAN_DIR (a plan folder made ahead for this TO_STEP, by fab: used, not made),
       THUNDER_FROM_STEP (the step the window starts from: the plan fails unless the writer's
       checkpoint.json is still there), THUNDER_RING_PORT (first port of the ring backend on each data IP, or jaccl's coordinator
       port on rank 0's data IP; default 32323)
exit: 0 window ended, 64 usage, 78 could not plan, other codes from mlx.launch
USAGE
}

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
py=${THUNDER_PYTHON:-$repo/.venv/bin/python}

if [ $# -lt 2 ] || [ $# -gt 3 ]; then usage; exit "$EX_USAGE"; fi
profile=$1; to=$2; target=${3:-$2}
case "$profile" in
  ''|*[!a-z0-9_]*) echo "launch: profile '$profile' must match [a-z0-9_]" >&2; exit "$EX_USAGE" ;;
esac
for n in "$to" "$target"; do
  case "$n" in
    ''|*[!0-9]*|0) echo "launch: '$n' is not a positive whole number" >&2; exit "$EX_USAGE" ;;
  esac
done

from=${THUNDER_FROM_STEP:--}
case "$from" in
  -) ;;
  ''|*[!0-9]*) echo "launch: THUNDER_FROM_STEP '$from' is not a step" >&2; exit "$EX_USAGE" ;;
esac
plan=${THUNDER_PLAN_DIR:-}
if [ -n "$plan" ]; then   # made ahead: to_step is written last, so a folder that has it is whole
  made=$(cat "$plan/to_step" 2>/dev/null || true)
  if [ "$made" != "$to" ]; then
    echo "launch: THUNDER_PLAN_DIR $plan is no plan for step $to (its to_step: '${made:-none}')" >&2
    exit "$EX_PLAN"
  fi
else
  if [ -n "${THUNDER_PLAN_ROOT:-}" ]; then
    mkdir -p "$THUNDER_PLAN_ROOT"
    plan=$(mktemp -d "$THUNDER_PLAN_ROOT/window-$to.XXXXXX")
  else
    plan=$(mktemp -d "${TMPDIR:-/tmp}/thunder-window.XXXXXX")
  fi
  (cd "$repo" && "$py" -m thunderlane.launcher_helpers plan-window "$profile" --to "$to" --target "$target" \
    --from "$from" --out "$plan") || exit "$EX_PLAN"
fi

ring_port=${THUNDER_RING_PORT:-32323}
case "$ring_port" in
  ''|*[!0-9]*) echo "launch: THUNDER_RING_PORT '$ring_port' is not a port" >&2; exit "$EX_USAGE" ;;
esac
backend=$(cat "$plan/backend")
case "$backend" in
  ring|jaccl) ;;
  *) echo "launch: backend '$backend' in $plan/backend is not ring or jaccl" >&2; exit "$EX_PLAN" ;;
esac
python=$(cat "$plan/python")
mlx_launch=$(cat "$plan/mlx_launch")
line="PATH=$plan/bin:\$PATH $mlx_launch --backend $backend --starting-port $ring_port --hostfile $plan/hostfile.json"
line="$line --python $python --env HF_HUB_OFFLINE=1 --env PYTHONUNBUFFERED=1 --env TERM=dumb --env TTY_INTERACTIVE=0"
line="$line -- -c \"\$(cat $plan/entry.py)\" \"\$(cat $plan/spec.json)\""
printf '%s\n' "$line" > "$plan/mlx_launch_line"   # the exact line, for the report
echo "launch: plan in $plan"
echo "launch: + $line"
PATH="$plan/bin:$PATH" "$mlx_launch" --backend "$backend" --starting-port "$ring_port" --hostfile "$plan/hostfile.json" \
  --python "$python" --env HF_HUB_OFFLINE=1 --env PYTHONUNBUFFERED=1 --env TERM=dumb --env TTY_INTERACTIVE=0 \
  -- -c "$(cat "$plan/entry.py")" "$(cat "$plan/spec.json")"
