#!/usr/bin/env bash
# Run a profile to an absolute step in windows of at most WINDOW steps, each through the launcher,
# stopping at the first window that does not commit. Runs on macOS bash 3.2 with BSD tools.
set -euo pipefail

EX_USAGE=64        # bad arguments
EX_LOCKED=75       # another window of this run is running
EX_NOCOMMIT=76     # a window ended but checkpoint.json did not reach its end step
EX_STATE=77        # the committed step could not be read (host unreachable, torn checkpoint)

usage() {
  cat >&2 <<'USAGE'
usage: run_gemma4_e2b_nko_correction_chunks.sh PROFILE TARGET_STEP WINDOW
  Train PROFILE (launchers/profiles/PROFILE.yaml) to absolute step TARGET_STEP in windows of at
  most WINDOW steps across the profile's hosts. At or past the target it trains nothing.
  example: ./run_gemma4_e2b_nko_correction_chunks.sh partial_real_stage1_stable 10 10
  env: THUNDER_INVENTORY (default: hosts.yaml), THUNDER_PYTHON (default: .venv/bin/python),
       THUNDER_START_STEP (the committed step the caller read: not read again; each window's plan
       checks the writer is still there), THUNDER_CALLER_GATES=1 (the caller checks checkpoint.json
       after the last window: this runner exits with that window's launch exit code),
       THUNDER_FIRST_PLAN (the first window's plan folder, made by the caller),
       THUNDER_LOCK_FD (a file descriptor on which the caller, having taken the window lock for
       this runner's pid, writes what launcher_helpers take-lock would print: no interpreter start)
  on macOS the runner and every rank run under caffeinate -i -s -w <pid> (no sleep mid-window)
exit: 0 target reached, 64 usage, 75 locked, 76 a window did not commit, 77 state unreadable,
      other codes are the failing window's (see launch_gemma4_e2b_nko_correction_thunder.sh)
USAGE
}

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
py=${THUNDER_PYTHON:-$repo/.venv/bin/python}

[ $# -eq 3 ] || { usage; exit "$EX_USAGE"; }
profile=$1; target=$2; window=$3
case "$profile" in
  ''|*[!a-z0-9_]*) echo "chunks: profile '$profile' must match [a-z0-9_]" >&2; usage; exit "$EX_USAGE" ;;
esac
for n in "$target" "$window"; do
  case "$n" in
    ''|*[!0-9]*|0) echo "chunks: '$n' is not a positive whole number" >&2; usage; exit "$EX_USAGE" ;;
  esac
done

helper() { (cd "$repo" && "$py" -m thunderlane.launcher_helpers "$@"); }

# macOS: no idle or system sleep while this runner lives (caffeinate ends with it). The lab acts
# as macOS with THUNDER_FORCE_DARWIN=<folder of stand-in tools>, honoured only with THUNDER_LAB_HOST.
keep_awake() {
  local tool=
  if [ -n "${THUNDER_FORCE_DARWIN:-}" ] && [ -n "${THUNDER_LAB_HOST:-}" ]; then
    tool=$THUNDER_FORCE_DARWIN/caffeinate
  elif [ "$(uname)" = Darwin ]; then
    tool=$(command -v caffeinate || true)
  fi
  if [ -n "$tool" ] && [ -x "$tool" ]; then
    "$tool" -i -s -w "$$" </dev/null >/dev/null 2>&1 &
    echo "chunks: macOS: $tool -i -s -w $$ (pid $!)"
  fi
}

# the lock is a directory renamed into place with this shell's pid and start time already inside:
# atomic, never ownerless, and a reused pid is not its owner
rc=0
if [ -n "${THUNDER_LOCK_FD:-}" ]; then
  case "$THUNDER_LOCK_FD" in
    *[!0-9]*) echo "chunks: THUNDER_LOCK_FD '$THUNDER_LOCK_FD' is not a file descriptor" >&2; exit "$EX_USAGE" ;;
  esac
  state='' holder='' lock=''
  read -r state holder lock <&"$THUNDER_LOCK_FD" || true
  eval "exec $THUNDER_LOCK_FD<&-"   # not left open for caffeinate, mlx.launch and the ranks
  unset THUNDER_LOCK_FD
  [ "$state" != held ] || rc=$EX_LOCKED
else
  taken=$(helper take-lock "$profile" "$$") || rc=$?
  read -r state holder lock <<LOCK
$taken
LOCK
fi
if [ "$rc" -eq "$EX_LOCKED" ]; then
  echo "chunks: another window of $profile is running (pid $holder holds $lock)" >&2
  exit "$EX_LOCKED"
elif [ "$rc" -ne 0 ] || [ -z "$lock" ]; then
  exit "$EX_USAGE"
fi
[ "$state" != taken-over ] || echo "chunks: stale lock $lock from pid $holder (not running): taken over"
release() { rm -rf "$lock"; }
trap release EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
keep_awake  # after the lock's pipe is closed: caffeinate would keep it open

if [ -n "${THUNDER_START_STEP:-}" ]; then
  case "$THUNDER_START_STEP" in
    *[!0-9]*) echo "chunks: THUNDER_START_STEP '$THUNDER_START_STEP' is not a step" >&2; exit "$EX_USAGE" ;;
  esac
  step=$THUNDER_START_STEP
else
  step=$(helper committed-step "$profile") || exit "$EX_STATE"
fi
if [ "$step" -ge "$target" ]; then
  echo "chunks: $profile is at step $step, at or past the target $target: nothing to train"
  exit 0
fi
echo "chunks: $profile from step $step to $target in windows of $window"
while [ "$step" -lt "$target" ]; do
  next=$((step + window))
  [ "$next" -le "$target" ] || next=$target
  echo "chunks: window $step -> $next"
  rc=0
  THUNDER_PLAN_DIR=${THUNDER_FIRST_PLAN:-} THUNDER_FROM_STEP=$step \
    "$here/launch_gemma4_e2b_nko_correction_thunder.sh" "$profile" "$next" "$target" || rc=$?
  THUNDER_FIRST_PLAN=   # later windows plan themselves, from the step the last one committed
  if [ "$next" -eq "$target" ] && [ "${THUNDER_CALLER_GATES:-}" = 1 ]; then
    echo "chunks: caller gates: window $step -> $next ended with launch exit $rc"
    exit "$rc"
  fi
  now=$(helper committed-step "$profile") || exit "$EX_STATE"
  if [ "$now" -ne "$next" ]; then
    echo "chunks: window $step -> $next did not commit: checkpoint.json is at step $now (launch exit $rc)" >&2
    [ "$rc" -ne 0 ] && exit "$rc"
    exit "$EX_NOCOMMIT"
  fi
  [ "$rc" -eq 0 ] || echo "chunks: window committed step $next but the launch exited $rc (noisy teardown)"
  step=$now
done
echo "chunks: $profile reached step $step"
