#!/bin/sh
# Sent by sync_gemma4_e2b_cache_to_thunder.sh --peer-transport rsyncd through the peer ssh and run
# on SRC (POSIX sh, macOS bash 3.2 / BSD tools): a one-shot rsync daemon serving one hub cache,
# read only, to one address, with one user whose secret is the first line of stdin (never on a
# command line). Prints "port N" once the daemon listens, then waits for stdin to close (the
# session ends) and stops the daemon and removes its folder (also on any exit).
# $1 the hub cache root (the folder of models--* and of the hub's shared store: rsync 3.4+
# follows a link, as -L asks, only inside the module), $2 rsync program, $3 the only client
# address allowed, $4 the address to listen on; optionally $5 a check of the source (sh script)
# and its arguments, run beside the daemon's start: its output comes first, then "src-end", and
# "port N" only if it named a revision ("src-rev ") and found nothing unsafe ("src-unsafe"); else
# the daemon is stopped before anyone is told where it listens
IFS= read -r secret || { echo "rsyncd-error no secret on stdin"; exit 1; }
case "$secret" in ''|*[!0-9a-f]*) echo "rsyncd-error the secret is not hex"; exit 1 ;; esac
umask 077
d=$(mktemp -d "${TMPDIR:-/tmp}/thunder-rsyncd.XXXXXX") || { echo "rsyncd-error mktemp failed"; exit 1; }
pid=""
check_pid=""
# shellcheck disable=SC2317  # run by the trap
cleanup() {
  # KILL, not TERM: rsync's daemon spends 0.4 s in its TERM/INT/HUP handler (rsync 3.x), which every
  # sync would wait; it holds nothing a clean exit would save (read only; its files are in $d)
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
  if [ -n "$check_pid" ]; then kill "$check_pid" 2>/dev/null; wait "$check_pid" 2>/dev/null; fi
  rm -rf "$d"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM PIPE
root=$1 prog=$2 client=$3 listen=$4
shift 4
if [ $# -gt 0 ]; then
  check=$1
  shift
  sh -c "$check" sh "$@" </dev/null >"$d/check" &
  check_pid=$!
fi
checked() {   # the check's output, then src-end; fails unless it named a revision, nothing unsafe
  [ -n "$check_pid" ] || return 0
  wait "$check_pid"
  check_pid=""   # reaped: cleanup must not signal a pid the system may give another process
  out=$(cat "$d/check")
  printf '%s\nsrc-end\n' "$out"
  case "$out" in *src-unsafe*) return 1 ;; *"src-rev "*) return 0 ;; *) return 1 ;; esac
}
printf 'lane:%s\n' "$secret" >"$d/secrets"
secret=""
uid=$(id -u) && gid=$(id -g) || exit 1
# socket options: the daemon's small protocol messages go at once, not after the client's delayed
# ACK (see the launcher's --sockopts)
cat >"$d/rsyncd.conf" <<CONF
use chroot = no
socket options = TCP_NODELAY
uid = $uid
gid = $gid
munge symlinks = no
max connections = 3
lock file = $d/lock
log file = $d/log
[lane]
path = $root
read only = yes
list = no
hosts allow = $client
hosts deny = *
auth users = lane
secrets file = $d/secrets
strict modes = yes
CONF
port=32400
while [ "$port" -lt 32464 ]; do
  : >"$d/log"
  "$prog" --daemon --no-detach "--config=$d/rsyncd.conf" "--address=$listen" "--port=$port" </dev/null >/dev/null 2>&1 &
  pid=$!
  n=0
  while [ "$n" -lt 150 ]; do   # listening (its log says so), or gone (the port is taken): 5.5 s
    kill -0 "$pid" 2>/dev/null || break
    grep -q "listening on port" "$d/log" 2>/dev/null && break
    if [ "$n" -lt 50 ]; then sleep 0.01 2>/dev/null || sleep 1; else sleep 0.05 2>/dev/null || sleep 1; fi
    n=$((n + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    checked || exit 0
    echo "port $port"
    cat >/dev/null
    exit 0
  fi
  wait "$pid" 2>/dev/null
  pid=""
  port=$((port + 1))
done
checked || exit 0
echo "rsyncd-error no free port in 32400-32463 on $listen (or '$prog' cannot run a daemon)"
exit 1
