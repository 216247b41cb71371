#!/usr/bin/env bash
# Push one model's whole Hugging Face cache folder (models--ORG--NAME: blobs, snapshots, refs)
# from this machine to a compute host with rsync over ssh, or (--from-host) have the host pull it
# from a peer host over their data link. Runs on macOS bash 3.2 with BSD tools and accepts rsync
# 2.6.9 / openrsync on every side.
set -euo pipefail

EX_USAGE=64     # bad arguments
EX_REFUSED=65   # a path outside the cache root, an unsafe link, a bad name
EX_SOURCE=66    # the local cache (or the --from-host's) is not usable as a source
EX_REMOTE=67    # the cleanup/preparation step on the host failed (255 if ssh itself failed)
EX_NORSYNC=69   # no usable rsync on the host (point --rsync-path at one)
# any other non-zero code is rsync's own (23 partial transfer, 30 timeout, 255 ssh failed, ...)

usage() {
  cat >&2 <<'EOF'
usage: sync_gemma4_e2b_cache_to_thunder.sh [options] --dest-cache DIR HOST
  Push models--ORG--NAME from the local HF hub cache to HOST's hub cache: blobs as files (also
  those the local cache keeps in huggingface_hub's shared store), snapshot links kept; on HOST,
  *.incomplete blobs whose lock no download holds are removed first, blobs that link to its own
  shared store are kept; only missing files are sent.
  HOST               ssh destination: an ssh config alias or user@host
  --dest-cache DIR   absolute hub cache root on HOST (the folder holding models--*)
  --src-cache DIR    local hub cache root (default: $HF_HUB_CACHE, else $HF_HOME/hub,
                     else ~/.cache/huggingface/hub)
  --repo ID          model repo id (default: mlx-community/gemma-4-e2b-4bit)
  --ssh CMD          ssh command for rsync -e and the cleanup (default: ssh; split on spaces)
  --rsync-path PATH  rsync program on HOST (default: rsync)
  --host-python PATH python 3.9+ on HOST, for the leftover check (default: python3)
  --checksum         compare file contents, not size and mtime (repairs a flipped byte)
  --bwlimit KBPS     limit the transfer rate (KiB/s)
  --timeout SECONDS  rsync --timeout: give up (exit 30) after SECONDS without data (default: 300)
  --dry-run          print what would be sent and removed; change nothing
 pull from a peer instead of pushing from here (HOST runs rsync, over HOST's own ssh to SRC):
  --from-host SRC    the source host as HOST reaches it over the data link: user@DATA_IP
  --from-cache DIR   absolute hub cache root on SRC
  --peer-ssh CMD     ssh command HOST runs to reach SRC (split on spaces; no quotes, $, backticks
                     or %; paths in it absolute)
  --peer-rsync-path P  rsync program on SRC (default: rsync)
  --peer-transport T ssh (default): rsync over the peer ssh; rsyncd: the peer ssh only starts on
                     SRC a one-shot read-only rsync daemon (launchers/peer_rsyncd.sh) for HOST's
                     address and a secret HOST makes, and HOST pulls over plain TCP (no cipher)
  --from-addr IP     SRC's data address the daemon listens on (IPv4/IPv6 literal; rsyncd)
  --host-addr IP     HOST's data address, the only one the daemon lets in (rsyncd)
exit: 0 ok, 64 usage, 65 refused path, 66 bad source cache, 67 remote cleanup failed,
      69 no usable rsync on HOST, other codes are rsync's (11 file I/O error, 23 partial
      transfer, 24 vanished, 30 timeout, 255 ssh)
EOF
}

die() { code=$1; shift; echo "sync: $*" >&2; exit "$code"; }

# single-quote a value for the remote shell (sh, bash or zsh): each ' becomes '\'' (pattern and
# replacement from variables: bash 3.2 and 4.3+ treat quotes inside ${x//...} differently)
sq_q="'"
sq_r="'\\''"
sq() { printf "'%s'" "${1//$sq_q/$sq_r}"; }

check_abs_path() {   # NAME VALUE: absolute, no '..', not '/', no control characters
  case "$2" in
    /) die "$EX_REFUSED" "$1 '/' is not a cache root" ;;
    /*) ;;
    *) die "$EX_REFUSED" "$1 '$2' is not an absolute path" ;;
  esac
  case "/$2/" in
    */../*) die "$EX_REFUSED" "$1 '$2' climbs with '..'" ;;
  esac
  case "$2" in
    *[[:cntrl:]]*) die "$EX_REFUSED" "$1 has a control character" ;;
    *%*) die "$EX_REFUSED" "$1 '$2' has a % (ssh expands it)" ;;
    *["$refused_chars"]*)
      die "$EX_REFUSED" "$1 '$2' has a quote, a backslash, a \$, a backtick or a wildcard (* ? [), which" \
        "the lane does not carry (white space and other characters are fine)" ;;
  esac
}

# the characters thunderlane/inventory.py refuses in paths besides % and control characters
refused_chars="'\"\\\$\`*?["

remote_path() {   # PATH: HOST:PATH for rsync, PATH quoted for the remote shell. rsync 2.6.9 and
  # openrsync pass it to that shell as it is; a local rsync 3.2.4+ would escape it once more,
  # which RSYNC_OLD_ARGS=1 (exported below; older rsyncs ignore it) turns off
  printf '%s:%s' "$host" "$(sq "$1")"
}

phys() {   # PATH: PATH with every folder on the way resolved (cd -P), its last part kept as it is
  local dir base
  base=$(basename "$1")
  case "$base" in
    .|..) (cd -P "$1" 2>/dev/null && pwd -P); return ;;
  esac
  dir=$(cd -P "$(dirname "$1")" 2>/dev/null && pwd -P) || return 1
  printf '%s/%s\n' "${dir%/}" "$base"
}

resolve() {   # PATH: its real path, resolving link after link (at most 40), as GNU readlink does with its -f flag
  local p hops=0 target
  p=$(phys "$1") || return 1
  while [ -L "$p" ]; do
    hops=$((hops + 1))
    [ "$hops" -le 40 ] || return 1
    target=$(readlink "$p")
    case "$target" in
      /*) ;;
      *) target=$(dirname "$p")/$target ;;
    esac
    p=$(phys "$target") || return 1
  done
  printf '%s\n' "$p"
}

store_marked() {   # CACHE: is CACHE/blobs huggingface_hub's marked shared blob store (layout 1)?
  local marker=$1/blobs/.huggingface-shared-blobs
  [ -d "$1/blobs" ] && [ ! -L "$1/blobs" ] && [ -f "$marker" ] && [ ! -L "$marker" ] &&
    [ "$(cat "$marker")" = 1 ]
}

store_link_ok() {   # REL TARGET REAL: is repo blob REL a link by the hub's own relative path to a
  # regular entry of the marked store of this same cache, with no other link on the way?
  local name=${3##*/} prefix
  case "$1" in blobs/*/*) return 1 ;; blobs/?*) ;; *) return 1 ;; esac
  printf '%s' "$name" | grep -Eq '^[0-9a-f]{64}$' || return 1
  prefix=${name%"${name#??}"}
  [ "$2" = "../../blobs/$prefix/$name" ] && [ "$3" = "$real_src_cache/blobs/$prefix/$name" ] &&
    [ -f "$3" ] && [ "$store" = 1 ]
}

shaped_link_ok() {   # REL TARGET: one of the two links the hub writes, proved by its shape and
  # no link on the way (no resolving, no subshell): snapshots/<rev>/<file> -> ../../blobs/<name>
  # ending at a regular file (a blob that is a link is checked as itself), or blobs/<etag> ->
  # ../../blobs/<2 hex>/<64 hex>, a regular entry of this cache's marked store
  local name=${2##*/} rev prefix
  case "$name" in ''|.|..|*[!A-Za-z0-9._-]*) return 1 ;; esac
  case "$1" in
    snapshots/*/*/*) return 1 ;;
    snapshots/?*/?*)
      rev=${1#snapshots/}
      rev=${rev%%/*}
      [ "$2" = "../../blobs/$name" ] && [ ! -L "$repo/snapshots" ] && [ ! -L "$repo/snapshots/$rev" ] &&
        [ ! -L "$repo/blobs" ] && [ -f "$repo/blobs/$name" ] ;;
    blobs/*/*) return 1 ;;
    blobs/?*)
      prefix=${name%"${name#??}"}
      case "$name" in *[!0-9a-f]*) return 1 ;; esac
      [ "$store" = 1 ] && [ ${#name} -eq 64 ] && [ "$2" = "../../blobs/$prefix/$name" ] && [ ! -L "$repo/blobs" ] &&
        [ ! -L "$real_src_cache/blobs/$prefix" ] && [ ! -L "$real_src_cache/blobs/$prefix/$name" ] &&
        [ -f "$real_src_cache/blobs/$prefix/$name" ] ;;
    *) return 1 ;;
  esac
}

link_names=()
link_values=()
link_targets() {   # REPO: every symlink under REPO (link_names) and its target (link_values), read
  # by one readlink for all (GNU's and BSD's take several names; a fork per link costs more than
  # the check); none kept when a name or a target has a newline (the lines would not pair up):
  # link_target then asks readlink for each
  local line n=0
  link_names=()
  link_values=()
  while IFS= read -r line; do
    [ -z "$line" ] || link_names+=("$line")
  done <<EOF
$(find "$1" -type l)
EOF
  [ "${#link_names[@]}" -gt 0 ] || return 0
  while IFS= read -r line; do
    link_values+=("$line")
    n=$((n + 1))
  done <<EOF
$(readlink -- "${link_names[@]}" 2>/dev/null; echo "end $?")
EOF
  # one line per link, then readlink's "end 0": anything else, and the pairs are not trusted
  if [ "$n" -ne $((${#link_names[@]} + 1)) ] || [ "${link_values[$((n - 1))]}" != "end 0" ]; then
    link_names=()
    link_values=()
  fi
}

link_target() {   # LINK: its target, from link_targets if it read it, else from readlink
  local i=0
  while [ "$i" -lt "${#link_names[@]}" ]; do
    if [ "${link_names[$i]}" = "$1" ]; then printf '%s\n' "${link_values[$i]}"; return 0; fi
    i=$((i + 1))
  done
  readlink "$1"
}

check_links() {   # every symlink in the repo folder: relative, and by its real path inside the repo
  # folder, or (a repo blob) into the marked shared store of the same cache, or (a snapshot link)
  # to a repo blob that does so; a blob link must end at a regular file
  local repo=$1 link rel target real hop
  real_src_repo=$(cd -P "$repo" && pwd -P)
  real_src_cache=$(cd -P "$src_cache" && pwd -P)
  [ "$real_src_repo" = "$real_src_cache/${repo##*/}" ] ||
    die "$EX_REFUSED" "$repo is a link to $real_src_repo, not a folder of the cache; refusing to sync it"
  store=0
  if store_marked "$real_src_cache"; then store=1; fi
  link_targets "$repo"
  while IFS= read -r link; do
    [ -n "$link" ] || continue
    rel=${link#"$repo"/}
    target=$(link_target "$link")
    case "$target" in
      /*) die "$EX_REFUSED" "$rel is an absolute link ($target); refusing to sync it" ;;
    esac
    shaped_link_ok "$rel" "$target" && continue   # the common case, without a subshell
    real=$(resolve "$link") || die "$EX_REFUSED" "$rel ($target) does not resolve (a loop, or a" \
      "folder missing on the way); refusing to sync it"
    case "$real" in
      "$real_src_repo"/*)
        [ -e "$real" ] || die "$EX_SOURCE" "$rel is a dangling link ($target -> $real)"
        case "$rel" in
          blobs/*) [ -f "$real" ] || die "$EX_REFUSED" "$rel ($target) is not a file; refusing to sync it" ;;
        esac
        continue ;;
    esac
    store_link_ok "$rel" "$target" "$real" && continue
    hop=$(phys "$(dirname "$link")/$target") || hop=""
    case "$rel" in
      snapshots/*) if [ "$(dirname "$hop")" = "$real_src_repo/blobs" ] && [ -L "$hop" ] &&
          store_link_ok "blobs/$(basename "$hop")" "$(readlink "$hop")" "$real"; then continue; fi ;;
    esac
    die "$EX_REFUSED" "$rel links outside the repo folder ($target -> $real); refusing to sync it"
  done <<EOF
$(find "$repo" -type l)
EOF
}

sum_stat() {   # LABEL LOGFILE...: a --stats figure ("1,234" or "1234") added up over the passes,
  # else "unknown": each pass must print the label at the start of exactly one line, its value a
  # plain byte count (openrsync prints no such line; a figure missing from one pass would make the
  # sum wrong, not just smaller; a human-readable "1.23M" would add up wrong)
  local label=$1
  shift
  awk -v label="$label" -v passes="$#" '
    FNR == 1 { f++ }
    index($0, label) == 1 { n[f]++; v = substr($0, length(label) + 1); sub(/^[ \t]+/, "", v); sub(/ bytes$/, "", v); val[f] = v }
    END { for (i = 1; i <= passes; i++) {
            if (n[i] != 1 || val[i] !~ /^[0-9][0-9,.]*$/) { print "unknown"; exit }
            v = val[i]; gsub(/[^0-9]/, "", v); total += v }
          printf "%.0f\n", total }' "$@"
}

pass_derived() {   # DIR LOGFILE: "BYTES FILES" of the regular files one pass itemized as sent, each
  # sized as it is under DIR here (a link followed, as -L sends it), or nothing if one cannot be
  # sized (rsync writes odd characters as \#ooo: a figure from such a name would be a guess).
  # -i lines: '<f' (pushed; '>f' if pulled), then rsync 3's 9 flags ("<f+++++++++ name",
  # YXcstpoguax), rsync 2.6.9's 7 (YXcstpogz, its rsync.1) or openrsync's (its tests: '^.[dfLS]\+{7,} ')
  local line name size bytes=0 files=0 flag='[.+?a-zA-Z]'
  while IFS= read -r line; do
    # shellcheck disable=SC2254  # $flag is a pattern
    case "$line" in
      [\<\>]f$flag$flag$flag$flag$flag$flag$flag*' '?*) ;;
      *) continue ;;
    esac
    name=${line#* }
    [ -f "$1/$name" ] || return 0
    size=$(wc -c <"$1/$name" | tr -d ' ')
    bytes=$((bytes + size))
    files=$((files + 1))
  done <<EOF
$(tr '\r' '\n' <"$2")
EOF
  echo "$bytes $files"
}

sum_derived() {   # DIR LOGFILE [DIR LOGFILE ...]: pass_derived added up over the passes, or nothing
  local got bytes=0 files=0
  while [ $# -ge 2 ]; do
    got=$(pass_derived "$1" "$2")
    [ -n "$got" ] || return 0
    bytes=$((bytes + ${got% *}))
    files=$((files + ${got#* }))
    shift 2
  done
  echo "$bytes $files"
}

file_data() {   # LABEL DIR LOGFILE [DIR LOGFILE ...]: the passes' --stats figure LABEL added up;
  # else (openrsync prints no such line) the sizes of the files they itemized as sent, saying
  # so: "N bytes", "N bytes (derived from K files itemized)" or "unknown bytes"
  local label=$1 outputs=() pairs got total
  shift
  pairs=("$@")
  while [ $# -ge 2 ]; do
    outputs+=("$2")
    shift 2
  done
  total=$(sum_stat "$label" "${outputs[@]}")
  if [ "$total" != unknown ]; then
    echo "$total bytes"
    return 0
  fi
  got=$(sum_derived "${pairs[@]}")
  if [ -z "$got" ]; then
    echo "unknown bytes"
    return 0
  fi
  echo "${got% *} bytes (derived from ${got#* } files itemized)"
}

check_peer_ssh() {   # --peer-ssh: split on spaces (as rsync splits -e) into words that need no
  # quoting on HOST; a path in a word (an option's value after '=') is absolute
  local word value lower
  case "$peer_ssh" in
    ''|-*) die "$EX_USAGE" "--peer-ssh '$peer_ssh' does not start with an ssh program" ;;
    *[[:cntrl:]%]*|*["$refused_chars"]*)
      die "$EX_REFUSED" "--peer-ssh '$peer_ssh' has a quote, a backslash, a \$, a backtick, a wildcard, a % or" \
        "a control character; it is split on spaces, never through a shell" ;;
  esac
  lower=$(printf '%s' "$peer_ssh" | tr '[:upper:]' '[:lower:]')
  case "$lower" in
    *proxycommand*|*localcommand*|*knownhostscommand*|*proxyjump*|*forwardagent=yes*)
      die "$EX_REFUSED" "--peer-ssh '$peer_ssh' runs a command or forwards the agent; the peer link needs neither" ;;
  esac
  read -r -a peer_argv <<PEER
$peer_ssh
PEER
  for word in "${peer_argv[@]}"; do
    value=${word#*=}
    case "$value" in
      */*) case "$value" in /*) ;; *) die "$EX_REFUSED" "--peer-ssh: '$word' is not an absolute path" ;; esac
           case "/$value/" in */../*) die "$EX_REFUSED" "--peer-ssh: '$word' climbs with '..'" ;; esac ;;
    esac
  done
}

ip_literal() {   # VALUE: an IPv4 (dotted quad) or IPv6 literal
  local ipv4='^(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])){3}$'
  [[ "$1" =~ $ipv4 ]] && return 0
  case "$1" in *:*:*) ;; *) return 1 ;; esac
  case "$1" in *[!0-9A-Fa-f:.]*|*:::*) return 1 ;; esac
}

check_transport() {   # --peer-transport and, for rsyncd, --from-addr/--host-addr
  case "$transport" in
    ssh) [ -z "$from_addr$host_addr" ] || die "$EX_USAGE" "--from-addr and --host-addr go with --peer-transport rsyncd" ;;
    rsyncd)
      [ "$pull" -eq 1 ] || die "$EX_USAGE" "--peer-transport rsyncd needs --from-host"
      if [ -z "$from_addr" ] || [ -z "$host_addr" ]; then
        die "$EX_USAGE" "--peer-transport rsyncd needs --from-addr and --host-addr"
      fi
      ip_literal "$from_addr" || die "$EX_USAGE" "--from-addr '$from_addr' is not an IPv4/IPv6 literal"
      ip_literal "$host_addr" || die "$EX_USAGE" "--host-addr '$host_addr' is not an IPv4/IPv6 literal" ;;
    *) die "$EX_USAGE" "--peer-transport '$transport' is not ssh or rsyncd" ;;
  esac
}

host_cmd() {   # WORD...: one command line for HOST's login shell (sh, bash or zsh), each word quoted
  local out="" word
  for word in "$@"; do out="$out $(sq "$word")"; done
  printf '%s' "${out# }"
}

# Run here, on HOST and on SRC (POSIX sh; $1 a repo folder): everything but blobs/ that the
# snapshots and refs passes would send, one "tree" line each (a file by its size and, if short and
# plain, its content; "?" when it cannot be compared), sorted: when every line of the source's is
# in the host's, those passes have nothing to send and are skipped. A name or link target with a
# newline is "tree ?" (one line per entry: nothing it holds can pass for a line of its own)
# shellcheck disable=SC2016  # expanded where it runs
tree_script='cd "$1" 2>/dev/null || exit 0
nl="
"
find . -path ./blobs -prune -o -name "*$nl*" -prune -exec echo "?" \; -o -print 2>/dev/null | LC_ALL=C sort |
while IFS= read -r e; do
  case "$e" in .|./blobs|*.incomplete|*/.DS_Store|*/._*|*/.rsync-partial/*) continue ;; "?") echo "tree ? (a name with a newline)"; continue ;; esac
  if [ -L "$e" ]; then
    t=$(readlink "$e"; echo .); t=${t%.}; t=${t%"$nl"}
    case "$t" in *"$nl"*) printf "%s\n" "tree ? $e" ;; *) printf "%s\n" "tree l $e $t" ;; esac
  elif [ -d "$e" ]; then printf "%s\n" "tree d $e"
  elif [ -f "$e" ]; then
    n=$(wc -c <"$e" | tr -d " "); c="?"
    if [ "$n" -le 64 ]; then c=$(cat "$e"); case "$c" in *[!0-9A-Za-z._-]*) c="?" ;; esac; fi
    printf "%s\n" "tree f $e $n${c:+ $c}"
  else printf "%s\n" "tree ? $e"; fi
done'

# Run on SRC by HOST over the peer ssh (POSIX sh; $1 cache root, $2 repo folder, $3 rsync, $4
# tree_script): the source checks the local cache gets here (repo, refs/main, its snapshot, each
# blob link into the marked shared store of this same cache, by the hub's own relative path, no
# link on the way), the rsync version, each blob's size (for the host's own store-linked blobs)
# and the tree lines
# shellcheck disable=SC2016  # expanded on SRC
src_script='cache=$1; repo=$1/$2
[ -d "$repo" ] || { echo "src-missing"; exit 0; }
real=$(cd -P "$repo" && pwd -P); root=$(cd -P "$cache" && pwd -P)
[ "$real" = "$root/$2" ] || { echo "src-unsafe $2 (a link to $real)"; exit 0; }
[ -f "$repo/refs/main" ] || { echo "src-norefs"; exit 0; }
rev=$(cat "$repo/refs/main")
case "$rev" in ""|*[!0-9a-f]*) echo "src-badref"; exit 0 ;; esac
[ -d "$repo/snapshots/$rev" ] || { echo "src-nosnap $rev"; exit 0; }
echo "src-rev $rev"
v=$("$3" --version 2>&1); rc=$?
echo "src-rsync $rc $(printf "%s\n" "$v" | head -n 1)"
m=$root/blobs/.huggingface-shared-blobs; store=0
if [ -d "$root/blobs" ] && [ ! -L "$root/blobs" ] && [ -f "$m" ] && [ ! -L "$m" ] && [ "$(cat "$m")" = 1 ]; then store=1; fi
for f in "$repo"/blobs/*; do
  n=${f##*/}
  if [ -L "$f" ]; then
    t=$(readlink "$f"); h=${t##*/}; p=${h%"${h#??}"}
    case "$h" in *[!0-9a-f]*) h="" ;; esac
    if [ "$store" != 1 ] || [ ${#h} -ne 64 ] || [ "$t" != "../../blobs/$p/$h" ] || [ -L "$root/blobs/$p" ] ||
       [ -L "$root/blobs/$p/$h" ] || [ ! -f "$root/blobs/$p/$h" ]; then echo "src-unsafe blobs/$n ($t)"; continue; fi
  fi
  [ -f "$f" ] && echo "src-blob $n $(wc -c <"$f" | tr -d " ")"
done
sh -c "$4" sh "$repo"
exit 0'

# Run on HOST (POSIX sh; $1 rsync, $2 python, $3 cache root, $4 repo folder, $5 --dry-run or "",
# $6 the peer check's command line or "", $7 unused, $8 1 when pulling): the rsync version,
# sync_prep.py (fed on stdin; -S: stdlib only, no site start) with the host's tree lines (its
# --tree: tree_script's lines, from one interpreter rather than a process per entry), pulling the
# sizes of its blobs (for the blob streams), the peer check: one ssh session for all, each answer
# on tagged lines
# shellcheck disable=SC2016  # expanded on HOST
host_script='v=$("$1" --version 2>&1); rc=$?
echo "version $rc $(printf "%s\n" "$v" | head -n 1)"
if [ -n "$5" ]; then "$2" -S - "$3" "$4" "$5" --tree; else "$2" -S - "$3" "$4" --tree; fi
echo "prep-exit $?"
[ "$8" != 1 ] || for f in "$3/$4"/blobs/*; do [ -f "$f" ] && [ ! -L "$f" ] && echo "host-blob ${f##*/} $(wc -c <"$f" | tr -d " ")"; done
if [ -n "$6" ]; then eval "$6" </dev/null; echo "peer-exit $?"; fi
exit 0'

repo_id=mlx-community/gemma-4-e2b-4bit
src_cache=""; dest_cache=""; ssh_cmd=ssh; rsync_path=rsync; host_python=python3; dry_run=0; host=""; checksum=0; bwlimit=""; io_timeout=300
from_host=""; from_cache=""; peer_ssh=""; peer_rsync_path=rsync; transport=ssh; from_addr=""; host_addr=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dest-cache) [ $# -ge 2 ] || { usage; exit "$EX_USAGE"; }; dest_cache=$2; shift 2 ;;
    --src-cache) [ $# -ge 2 ] || { usage; exit "$EX_USAGE"; }; src_cache=$2; shift 2 ;;
    --repo) [ $# -ge 2 ] || { usage; exit "$EX_USAGE"; }; repo_id=$2; shift 2 ;;
    --ssh) [ $# -ge 2 ] || { usage; exit "$EX_USAGE"; }; ssh_cmd=$2; shift 2 ;;
    --rsync-path) [ $# -ge 2 ] || { usage; exit "$EX_USAGE"; }; rsync_path=$2; shift 2 ;;
    --host-python) [ $# -ge 2 ] || { usage; exit "$EX_USAGE"; }; host_python=$2; shift 2 ;;
    --checksum|-c) checksum=1; shift ;;
    --bwlimit) [ $# -ge 2 ] || { usage; exit "$EX_USAGE"; }; bwlimit=$2; shift 2 ;;
    --timeout) [ $# -ge 2 ] || { usage; exit "$EX_USAGE"; }; io_timeout=$2; shift 2 ;;
    --from-host) [ $# -ge 2 ] || { usage; exit "$EX_USAGE"; }; from_host=$2; shift 2 ;;
    --from-cache) [ $# -ge 2 ] || { usage; exit "$EX_USAGE"; }; from_cache=$2; shift 2 ;;
    --peer-ssh) [ $# -ge 2 ] || { usage; exit "$EX_USAGE"; }; peer_ssh=$2; shift 2 ;;
    --peer-rsync-path) [ $# -ge 2 ] || { usage; exit "$EX_USAGE"; }; peer_rsync_path=$2; shift 2 ;;
    --peer-transport) [ $# -ge 2 ] || { usage; exit "$EX_USAGE"; }; transport=$2; shift 2 ;;
    --from-addr) [ $# -ge 2 ] || { usage; exit "$EX_USAGE"; }; from_addr=$2; shift 2 ;;
    --host-addr) [ $# -ge 2 ] || { usage; exit "$EX_USAGE"; }; host_addr=$2; shift 2 ;;
    --dry-run|-n) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) echo "sync: unknown option $1" >&2; usage; exit "$EX_USAGE" ;;
    *) [ -z "$host" ] || { echo "sync: one HOST only" >&2; usage; exit "$EX_USAGE"; }; host=$1; shift ;;
  esac
done
if [ -z "$host" ] || [ -z "$dest_cache" ]; then usage; exit "$EX_USAGE"; fi
case "$host" in
  -*|*[!A-Za-z0-9_.@:-]*) die "$EX_REFUSED" "host '$host' is not an ssh destination" ;;
esac
repo_re='^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$'
[[ "$repo_id" =~ $repo_re ]] || die "$EX_REFUSED" "repo id '$repo_id' is not ORG/NAME"
for program in "--rsync-path=$rsync_path" "--peer-rsync-path=$peer_rsync_path"; do
  case "${program#*=}" in
    -*|*[!A-Za-z0-9_./+-]*|'') die "$EX_REFUSED" "${program%%=*} '${program#*=}' is not a program path" ;;
  esac
done
case "$host_python" in   # a program name, or a path as the inventory takes it (spaces allowed)
  -*|*[[:cntrl:]%]*|*["$refused_chars"]*|'') die "$EX_REFUSED" "--host-python '$host_python' is not a program path" ;;
  /*|*[!A-Za-z0-9_.+-]*) check_abs_path --host-python "$host_python" ;;
esac
case "$bwlimit" in
  *[!0-9]*) die "$EX_USAGE" "--bwlimit '$bwlimit' is not a whole number of KiB/s" ;;
esac
case "$io_timeout" in
  ''|0|*[!0-9]*) die "$EX_USAGE" "--timeout '$io_timeout' is not a whole number of seconds above 0" ;;
esac
pull=0
if [ -n "$from_host$from_cache$peer_ssh" ]; then
  pull=1
  if [ -z "$from_host" ] || [ -z "$from_cache" ] || [ -z "$peer_ssh" ]; then
    die "$EX_USAGE" "--from-host, --from-cache and --peer-ssh go together"
  fi
  case "$from_host" in
    -*|*[!A-Za-z0-9_.@:-]*) die "$EX_REFUSED" "--from-host '$from_host' is not an ssh destination" ;;
  esac
  check_abs_path --from-cache "$from_cache"
  check_peer_ssh
fi
check_transport

if [ -z "$src_cache" ]; then
  if [ -n "${HF_HUB_CACHE:-}" ]; then src_cache=$HF_HUB_CACHE
  elif [ -n "${HF_HOME:-}" ]; then src_cache=$HF_HOME/hub
  else src_cache=$HOME/.cache/huggingface/hub; fi
fi
check_abs_path --dest-cache "$dest_cache"
[ "$pull" -eq 1 ] || check_abs_path --src-cache "$src_cache"

folder="models--$(printf '%s' "$repo_id" | sed 's#/#--#')"
src_repo=$src_cache/$folder
dest_repo=$dest_cache/$folder
from_repo=$from_cache/$folder

if [ "$pull" -eq 0 ]; then
  [ -d "$src_repo" ] || die "$EX_SOURCE" "no $src_repo on this machine"
  [ -f "$src_repo/refs/main" ] || die "$EX_SOURCE" "$src_repo/refs/main is missing"
  revision=$(cat "$src_repo/refs/main")
  [ -d "$src_repo/snapshots/$revision" ] ||
    die "$EX_SOURCE" "refs/main names $revision but $src_repo/snapshots/$revision is missing"
  check_links "$src_repo"
fi

# one ssh connection for every step (version check, cleanup, three rsync passes): a short socket
# path under /tmp (macOS limits it to 104 bytes), closed on exit
export RSYNC_OLD_ARGS=1       # our remote paths are quoted already: see remote_path
unset RSYNC_PROTECT_ARGS
ctl=$(mktemp -d /tmp/thunder-ssh.XXXXXX)
ssh_cmd="$ssh_cmd -o ControlMaster=auto -o ControlPath=$ctl/%C -o ControlPersist=30"
read -r -a ssh_argv <<EOF
$ssh_cmd
EOF
logs=$(mktemp -d "${TMPDIR:-/tmp}/thunder-sync.XXXXXX")   # one rsync output per pass
rsyncd_pid=""
streams=""   # 1 while the blob streams (stream_pids, stream_logs) run
stream_pids=()
stream_logs=()
finish() {
  # the blob streams still running: stopped on HOST too (stop_stream), before the master goes
  if [ -n "$streams" ]; then
    streams=""
    stream_live 1 && stop_stream 1
    stream_live 2 && stop_stream 2
    kill "${stream_pids[1]}" "${stream_pids[2]}" 2>/dev/null || true
  fi
  close_rsyncd
  "${ssh_argv[@]}" -O exit "$host" >/dev/null 2>&1 || true
  rm -rf "$ctl" "$logs"
}
trap finish EXIT

check_version() {   # WHO PROGRAM RC FIRST-LINE [OPTION]: the answer of `PROGRAM --version` on WHO
  if [ "$3" -ne 0 ] && [ "$3" -ne 1 ]; then
    die "$EX_NORSYNC" "no usable rsync on $1 at '$2' (exit $3); install rsync there" \
      "or pass ${5:---rsync-path} /path/to/rsync (e.g. /opt/homebrew/bin/rsync)"
  fi
  case "$4" in
    *openrsync*|*"version 2."*)
      old_rsync=1
      echo "sync: $1 runs an old rsync ($4): using only flags it accepts" ;;
    *rsync*version*) ;;
    *) die "$EX_NORSYNC" "'$2' on $1 does not look like rsync ($4); pass ${5:---rsync-path} /path/to/rsync" ;;
  esac
}

peer_check_cmd() {   # the command line HOST runs to check SRC (see src_script)
  printf '%s %s' "$(host_cmd "${peer_argv[@]}" "$from_host")" \
    "$(sq "sh -c $(sq "$src_script") sh $(sq "$from_cache") $(sq "$folder") $(sq "$peer_rsync_path") $(sq "$tree_script")")"
}

prepare_host() {   # [--dry-run]: one session on HOST: its rsync's version, the host-side check and
  # stale-leftover cleanup (sync_prep.py, its findings shown as "sync: ..." lines; the host's blobs
  # that link to a whole file, the hub's shared store, become excludes of the blobs pass: the host
  # keeps them as they are) and, pulling, the check of SRC as HOST reaches it
  local rc=0 peer="" tag a b
  [ "$pull" -eq 0 ] || [ "$transport" = rsyncd ] || peer=$(peer_check_cmd)
  "${ssh_argv[@]}" "$host" "sh -c $(sq "$host_script") sh $(sq "$rsync_path") $(sq "$host_python") \
$(sq "$dest_cache") $(sq "$folder") $(sq "${1:-}") $(sq "$peer") '' $pull" <"$prep_script" >"$logs/prep" || rc=$?
  [ "$rc" -eq 0 ] || die 255 "ssh to $host failed: unreachable, refused, or its host key is unknown or changed"
  while IFS=' ' read -r tag a b; do
    case "$tag" in
      version) check_version "$host" "$rsync_path" "$a" "$b" ;;
      prep-exit)
        if [ "$a" = 3 ]; then die "$EX_REFUSED" "$host:$dest_cache: refused by the host-side check (see above)"
        elif [ "$a" != 0 ]; then
          die "$EX_REMOTE" "could not prepare $host:$dest_repo with $host_python (exit $a; is it python 3," \
            "is the disk full or read-only? pass --host-python)"
        fi ;;
      linked) host_linked+=("$a $b") ;;
      host-blob) host_sizes+=("$a $b") ;;
      absent) host_absent=1 ;;
      removed|would|kept) echo "sync: $tag $a $b" ;;
      src-*|peer-exit) check_source "$tag" "$a" "$b" ;;
      host-tree) echo "tree $a $b" >>"$logs/tree-host" ;;
      tree) echo "tree $a $b" >>"$logs/tree-src" ;;   # the peer's
    esac
  done <"$logs/prep"
  [ "$pull" -eq 0 ] || [ "$transport" = rsyncd ] || [ -n "$revision" ] ||
    die 255 "$host could not reach $from_host (no answer from the peer check; see above)"
}

check_source() {   # TAG A B: a line of the peer check (pulling)
  case "$1" in
    peer-exit) [ "$2" = 0 ] || die "$([ "$2" = 255 ] && echo 255 || echo "$EX_SOURCE")" "$host could not reach" \
      "$from_host over the peer ssh (exit $2: unreachable, refused, or the peer key or host key is not installed)" ;;
    src-missing) die "$EX_SOURCE" "no $from_repo on $from_host" ;;
    src-norefs) die "$EX_SOURCE" "$from_host:$from_repo/refs/main is missing" ;;
    src-badref) die "$EX_SOURCE" "$from_host:$from_repo/refs/main does not hold a commit hash" ;;
    src-nosnap) die "$EX_SOURCE" "refs/main names $2 but $from_host:$from_repo/snapshots/$2 is missing" ;;
    src-unsafe) die "$EX_REFUSED" "$from_host:$from_repo: $2 $3 links outside the repo folder and its cache's" \
      "shared store; refusing to sync it" ;;
    src-rev) revision=$2 ;;
    src-rsync) check_version "$from_host" "$peer_rsync_path" "$2" "$3" --peer-rsync-path ;;
    src-blob) src_sizes+=("$2 $3") ;;
  esac
}

source_size() {   # ETAG: the source's size of blob ETAG, or nothing
  local entry
  if [ "$pull" -eq 0 ]; then
    [ ! -f "$src_repo/blobs/$1" ] || wc -c <"$src_repo/blobs/$1" | tr -d ' '
    return 0
  fi
  for entry in "${src_sizes[@]+"${src_sizes[@]}"}"; do
    [ "${entry% *}" != "$1" ] || { echo "${entry#* }"; return 0; }
  done
}

keep_linked() {   # the host's store-linked blobs of the source's size: excluded from the blobs pass
  local entry etag
  for entry in "${host_linked[@]+"${host_linked[@]}"}"; do
    etag=${entry% *}
    case "$etag" in ''|*[!0-9a-f]*) continue ;; esac   # the host's word: only a blob name (hex) is taken
    [ "$(source_size "$etag")" != "${entry#* }" ] || keep+=("--exclude=/$etag")
  done
}

tree_differs() {   # PART (snapshots, or rest: everything else but blobs): would that pass send
  # anything? (yes when unsure)
  [ -s "$logs/tree-src" ] && [ -f "$logs/tree-host" ] || return 0
  ! grep -q '^tree ? ' "$logs/tree-src" || return 0
  local rc=0 part='^tree . \./snapshots( |/|$)'
  grep -Fxv -f "$logs/tree-host" "$logs/tree-src" >"$logs/tree-missing" || rc=$?
  [ "$rc" -le 1 ] || return 0   # an error: run it
  # a line of the source's PART that the host lacks
  if [ "$1" = snapshots ]; then grep -Eq "$part" "$logs/tree-missing"; else grep -Evq "$part" "$logs/tree-missing"; fi
}

# Run on HOST (POSIX sh; $1 the peer command line that starts peer_rsyncd.sh on SRC) for the whole
# rsyncd pull: makes the secret (never on a command line), keeps it in a 0700 folder for the passes,
# feeds it to the wrapper's first line, then relays this session's stdin (its end stops the daemon);
# the peer ssh's end is told at once ("rsyncd-exit N"), not when this session's stdin ends
# shellcheck disable=SC2016  # expanded on HOST
hold_script='umask 077
d=$(mktemp -d "${TMPDIR:-/tmp}/thunder-peer.XXXXXX") || exit 1
trap "rm -rf \"\$d\"" EXIT
s=$(od -An -N16 -tx1 /dev/urandom | tr -d " \n")
[ ${#s} -eq 32 ] || { echo "rsyncd-error no secret from /dev/urandom"; exit 1; }
printf "%s\n" "$s" >"$d/pw" || exit 1
echo "pwdir $d"
{ printf "%s\n" "$s"; s=""; cat; } | { eval "$1"; echo "rsyncd-exit $?"; }'

# Run on SRC (POSIX sh) by the rsyncd session for its whole length: the daemon (launchers/
# peer_rsyncd.sh, which reads the secret on this session's stdin) and, beside its start, the source
# check (src_script): its lines first; the daemon's port only if it named the revision and found
# nothing unsafe; $1 cache root, $2 repo folder, $3 rsync, $4 tree_script, $5 src_script, $6 the
# wrapper, $7 HOST's address, $8 SRC's
# shellcheck disable=SC2016  # expanded on SRC
serve_script='exec sh -c "$6" sh "$1" "$3" "$7" "$8" "$5" "$1" "$2" "$3" "$4"'

start_rsyncd() {   # one session HOST -> SRC over the peer ssh, in the background: SRC's check, then
  # the daemon (serve_script); runs beside prepare_host, read by await_rsyncd
  local wrapper peer
  wrapper=$(cat "$launchers_dir/peer_rsyncd.sh")
  peer="$(host_cmd "${peer_argv[@]}" "$from_host") $(sq "sh -c $(sq "$serve_script") sh $(sq "$from_cache") \
$(sq "$folder") $(sq "$peer_rsync_path") $(sq "$tree_script") $(sq "$src_script") $(sq "$wrapper") $(sq "$host_addr") \
$(sq "$from_addr")")"
  mkfifo "$logs/hold"
  "${ssh_argv[@]}" "$host" "sh -c $(sq "$hold_script") sh $(sq "$peer")" <"$logs/hold" >"$logs/rsyncd" 2>&1 &
  rsyncd_pid=$!
  exec 4>"$logs/hold"
}

await_rsyncd() {   # the rsyncd session's answers: SRC's check (as prepare_host reads the ssh
  # transport's), then the daemon's port; sets rsyncd_url and pwdir
  local n=0 port
  while ! rsyncd_answered "$logs/rsyncd"; do
    if [ -n "$rsyncd_ended" ] || ! kill -0 "$rsyncd_pid" 2>/dev/null || [ "$n" -ge 680 ]; then
      source_answers
      sed 's/^/sync: rsyncd: /' "$logs/rsyncd" >&2
      [ -n "$revision" ] || ! grep -q '^rsyncd-exit 255$' "$logs/rsyncd" ||
        die 255 "$host could not reach $from_host over the peer ssh (exit 255: unreachable, refused, or the" \
          "peer key or host key is not installed)"
      die "$EX_SOURCE" "could not start an rsync daemon on $from_host at $from_addr through $host (see above)"
    fi
    # a look every 10 ms for the first second (the peer ssh's handshake, the check, the daemon's
    # start: about a third of a second), then every 50 ms; 30 s in all
    if [ "$n" -lt 100 ]; then sleep 0.01 2>/dev/null || sleep 1; else sleep 0.05 2>/dev/null || sleep 1; fi
    n=$((n + 1))
  done
  source_answers
  port=$(daemon_port "$logs/rsyncd")
  pwdir=$(sed -n 's/^pwdir //p' "$logs/rsyncd" | head -n 1)
  case "$from_addr" in *:*) rsyncd_url="rsync://lane@[$from_addr]:$port/lane" ;; *) rsyncd_url="rsync://lane@$from_addr:$port/lane" ;; esac
  echo "sync: rsync daemon on $from_host at $from_addr port $port for $host_addr only"
}

rsyncd_answered() {   # FILE: has the rsyncd session said the daemon's port (as daemon_port finds it)?
  # rsyncd_ended: it said it ended ("rsyncd-..."). Read by the shell itself: a look costs no process
  local line e=0 p="" v
  rsyncd_ended=""
  while IFS= read -r line; do
    case "$line" in
      src-end) e=1; p="" ;;
      'port '*) v=${line#port }; case "$v" in ''|*[!0-9]*) ;; *) [ "$e" -eq 0 ] || [ -n "$p" ] || p=$v ;; esac ;;
      rsyncd-*) rsyncd_ended=1 ;;
    esac
  done <"$1"
  [ -n "$p" ]
}

daemon_port() {   # FILE: the daemon's port, the first "port N" line after the source check's last line
  # (src-end): a line of the check, from names on SRC, is never taken for it
  awk '/^src-end$/ { p = ""; e = 1; next } e && p == "" && /^port [0-9]+$/ { p = $2 } END { print p }' "$1"
}

source_answers() {   # SRC's check lines in the rsyncd session's output (once)
  local tag a b
  [ -z "$revision" ] || return 0
  while IFS=' ' read -r tag a b; do
    case "$tag" in
      src-*) check_source "$tag" "$a" "$b" ;;
      tree) echo "tree $a $b" >>"$logs/tree-src" ;;
    esac
  done <"$logs/rsyncd"
}

open_master() {   # the one ssh connection to HOST, made before the sessions that run side by side
  "${ssh_argv[@]}" -f -N "$host" </dev/null ||
    die 255 "ssh to $host failed: unreachable, refused, or its host key is unknown or changed"
}

close_rsyncd() {   # end the daemon session: SRC stops the daemon and removes its folder, HOST its own
  [ -n "$rsyncd_pid" ] || return 0
  exec 4>&-
  wait "$rsyncd_pid" 2>/dev/null || true
  rsyncd_pid=""
}

src_arg() {   # PART: the source of a pass (local path, SRC:PATH quoted for SRC's shell, or a daemon URL)
  if [ "$transport" = rsyncd ]; then
    printf '%s/%s/%s' "$rsyncd_url" "$folder" "$1"
  elif [ "$pull" -eq 1 ]; then printf '%s:%s' "$from_host" "$(sq "$from_repo/$1")"; else printf '%s' "$src_repo/$1"; fi
}

dest_arg() {   # PART: the destination of a pass (HOST:PATH quoted for HOST's shell, or HOST's path)
  if [ "$pull" -eq 1 ]; then printf '%s' "$dest_repo/$1"; else remote_path "$dest_repo/$1"; fi
}

pull_line() {   # RSYNC-ARGS...: the command line HOST runs for one rsync pass
  local env=""
  # rsyncd: the secret reaches HOST's rsync in its environment only (ps shows command lines)
  if [ "$transport" = rsyncd ]; then
    env="RSYNC_PASSWORD=\$(cat $(sq "$pwdir/pw")) || exit 5; export RSYNC_PASSWORD; "
  fi
  printf '%s' "RSYNC_OLD_ARGS=1; export RSYNC_OLD_ARGS; unset RSYNC_PROTECT_ARGS; ${env}exec $(host_cmd "$rsync_path" "$@")"
}

pull_once() {   # RSYNC-ARGS...: HOST runs one rsync pass
  "${ssh_argv[@]}" "$host" "$(pull_line "$@")" </dev/null
}

pass_exit() {   # RC: end the sync with a pass's failing code (pulling, an ssh exit 255 over a live
  # connection to HOST was the peer's)
  [ "$1" -ne 0 ] || return 0
  if [ "$pull" -eq 1 ] && [ "$1" -eq 255 ] && "${ssh_argv[@]}" -O check "$host" >/dev/null 2>&1; then
    die 255 "$host could not reach $from_host over the peer ssh (rsync exit 255)"
  fi
  exit "$1"
}

run_pass() {   # LOG RSYNC-ARGS...: one rsync pass, here (push) or on HOST (pull), its output shown and
  # kept in $logs/LOG; a failure ends the sync with rsync's code
  local log=$1 rc=0 try=0 err=$logs/$1.err
  shift
  # rsyncd: its errors are kept to see a busy daemon ("max connections")
  if [ "$pull" -eq 0 ]; then
    rsync "$@" | tee "$logs/$log" || rc=$?
  else
    while :; do
      rc=0
      if [ "$transport" = rsyncd ]; then
        pull_once "$@" 2>"$err" | tee "$logs/$log" || rc=$?
        cat "$err" >&2
      else
        pull_once "$@" | tee "$logs/$log" || rc=$?
      fi
      # max connections (peer_rsyncd.sh): the last passes' daemon children may not have gone yet
      if [ "$rc" -ne 5 ] || [ "$transport" != rsyncd ] || [ "$try" -ge 5 ] || ! grep -q 'max connections' "$err"; then
        break
      fi
      try=$((try + 1))
      sleep 1
    done
  fi
  pass_exit "$rc"
}

# bytes (1 or more): a missing blob this big or bigger is worth a stream of its own (the tests' tiny
# models set THUNDER_SYNC_STREAM_MIN lower)
STREAM_MIN=${THUNDER_SYNC_STREAM_MIN:-16777216}
case "$STREAM_MIN" in ''|*[!0-9]*) STREAM_MIN=0 ;; esac
[ "$STREAM_MIN" -ge 1 ] 2>/dev/null ||
  die "$EX_USAGE" "THUNDER_SYNC_STREAM_MIN '${THUNDER_SYNC_STREAM_MIN:-}' is not a whole number of bytes, 1 or more"
# tests only: "K1 K2", each stream's --bwlimit in KiB/s (0: none), to keep one stream slow (--bwlimit
# itself means one stream: rsync applies it per process)
stream_bw=(0 0)
[ -z "${THUNDER_SYNC_STREAM_BWLIMIT:-}" ] || read -r -a stream_bw <<BW
$THUNDER_SYNC_STREAM_BWLIMIT
BW
case "${#stream_bw[@]}:${stream_bw[0]}:${stream_bw[1]:-}" in
  2:*[!0-9:]*|2::*|2:*:) die "$EX_USAGE" "THUNDER_SYNC_STREAM_BWLIMIT '${THUNDER_SYNC_STREAM_BWLIMIT:-}' is not two KiB/s" ;;
  2:*) ;;
  *) die "$EX_USAGE" "THUNDER_SYNC_STREAM_BWLIMIT '${THUNDER_SYNC_STREAM_BWLIMIT:-}' is not two KiB/s" ;;
esac

size_in() {   # ETAG ENTRY...: the size of ETAG in "ETAG SIZE" entries, or nothing
  local etag=$1 entry
  shift
  for entry in "$@"; do
    [ "${entry% *}" != "$etag" ] || { echo "${entry#* }"; return 0; }
  done
}

missing_blobs() {   # "SIZE ETAG" of each source blob of STREAM_MIN bytes or more that HOST lacks (or
  # holds at another size), biggest first; pulling only (SRC sized them in its check)
  local entry etag size
  for entry in "${src_sizes[@]+"${src_sizes[@]}"}"; do
    etag=${entry% *}
    size=${entry#* }
    case "$etag" in ''|*[!0-9a-f]*) continue ;; esac   # hex names and plain sizes only
    case "$size" in ''|*[!0-9]*) continue ;; esac
    [ "$size" -ge "$STREAM_MIN" ] || continue
    [ "$(size_in "$etag" "${host_sizes[@]+"${host_sizes[@]}"}")" != "$size" ] || continue
    [ "$(size_in "$etag" "${host_linked[@]+"${host_linked[@]}"}")" != "$size" ] || continue
    echo "$size $etag"
  done | sort -k1,1nr
}

split_blobs() {   # stream_a: --include of the blobs dealt to a second stream (each missing big blob,
  # biggest first, to the stream with fewer bytes so far; the first stream then takes all the rest,
  # small blobs included), stream_b: their --exclude; both empty when fewer than two big blobs are
  # missing, when pushing (the control link is the bound, not one rsync's CPU), in a dry run, with
  # --bwlimit (rsync applies it per process: two streams would take twice the rate asked), or with
  # openrsync or rsync 2.x at either end (their anchored include/exclude is unproven: a blob in
  # neither stream would let the snapshots pass link to a missing blob)
  local size etag a=0 b=0 n=0
  stream_a=()
  stream_b=()
  [ "$pull" -eq 1 ] && [ "$dry_run" -eq 0 ] && [ -z "$bwlimit" ] && [ "$old_rsync" -eq 0 ] || return 0
  while read -r size etag; do
    [ -n "$etag" ] || continue
    if [ "$b" -lt "$a" ]; then
      stream_a+=("--include=/$etag")
      stream_b+=("--exclude=/$etag")
      b=$((b + size))
      n=$((n + 1))
    else
      a=$((a + size))
    fi
  done <<BLOBS
$(missing_blobs)
BLOBS
  if [ "$n" -eq 0 ] || [ "$b" -le 0 ]; then stream_a=(); stream_b=(); return 0; fi
  stream_a+=("--exclude=*")
  echo "sync: blobs in two streams: $a and $b bytes"
}

stream_live() {   # N: stream N (1 or 2) still runs (its subshell has not written its exit code)
  [ ! -f "$logs/rc.$1" ] && kill -0 "${stream_pids[$1]}" 2>/dev/null
}

stream_code() {   # N: stream N's exit code (its subshell's file; gone without one: killed, 1)
  local rc=""
  [ -f "$logs/rc.$1" ] && read -r rc <"$logs/rc.$1"
  case "$rc" in ''|*[!0-9]*) echo 1 ;; *) echo "$rc" ;; esac
}

# Run on HOST (POSIX sh; dash takes no `--` in kill): stop the process group $1 (a blob stream's
# session: its rsync, the receiver it forked, its ssh to the peer) with TERM, so that rsync removes
# its temp file; KILL what is left after 2 s (rsync 3.2's receiver outlives a TERM while data comes;
# sync_prep.py removes a temp file left)
# shellcheck disable=SC2016  # expanded on HOST
stop_script='kill -0 "$1" 2>/dev/null || exit 0
kill -TERM "-$1"
n=0
while kill -0 "-$1" 2>/dev/null && [ "$n" -lt 20 ]; do sleep 0.1 2>/dev/null || sleep 1; n=$((n + 1)); done
kill -KILL "-$1" 2>/dev/null
exit 0'

stop_stream() {   # N: stop stream N: its process group on HOST (stop_script; the pid its session
  # printed first leads it), through the connection to HOST if up and within 5 s (never blocked on
  # a dead link); else, or if it still runs, its ssh here
  local rpid n=0 kpid lssh=""
  rpid=$(sed -n 's/^stream pid \([0-9][0-9]*\)$/\1/p' "${stream_logs[$1]}" | head -n 1)
  if [ -n "$rpid" ] && "${ssh_argv[@]}" -O check "$host" >/dev/null 2>&1; then
    "${ssh_argv[0]}" -o ControlMaster=no -o ConnectTimeout=5 "${ssh_argv[@]:1}" "$host" \
      "sh -c $(sq "$stop_script") sh $rpid" </dev/null >/dev/null 2>&1 &
    kpid=$!
    while kill -0 "$kpid" 2>/dev/null && [ "$n" -lt 60 ]; do sleep 0.1 2>/dev/null || sleep 1; n=$((n + 1)); done
    kill "$kpid" 2>/dev/null || true
    n=0
    while stream_live "$1" && [ "$n" -lt 30 ]; do sleep 0.1 2>/dev/null || sleep 1; n=$((n + 1)); done
  fi
  stream_live "$1" || return 0
  [ -f "$logs/ssh.$1" ] && read -r lssh <"$logs/ssh.$1"
  [ -z "$lssh" ] || kill "$lssh" 2>/dev/null || true
}

relay() {   # FILE OFFSET: print FILE's bytes past OFFSET; prints the new offset on fd 3
  local size
  size=$(wc -c <"$1" | tr -d ' ')
  [ "$size" -gt "$2" ] && tail -c +"$(($2 + 1))" "$1" | head -c "$((size - $2))"
  echo "$size" >&3
}

await_streams() {   # both streams (stream_pids, stream_logs): stream 1's output is shown live (tee),
  # stream 2's kept in its log until stream 1 ended, then relayed as it comes (progress lines go on:
  # fab's silence watchdog); the first to fail stops the other; sets stream_rc (the first failure's)
  local first=1 other=2 rc=0 off=0
  # looks every 20 ms (two balanced streams end close together: each look's wait is the sync's)
  while stream_live 1 && stream_live 2; do sleep 0.02 2>/dev/null || sleep 1; done
  if stream_live 1; then first=2; other=1; fi
  rc=$(stream_code "$first")
  if [ "$rc" -ne 0 ]; then
    stop_stream "$other"
  fi
  wait "$tee_pid" 2>/dev/null || true
  while stream_live 2; do
    if ! stream_live 1; then off=$(relay "${stream_logs[2]}" "$off" 3>&1 >&4); fi
    sleep 0.05 2>/dev/null || sleep 1
  done 4>&1
  wait "$tee_pid" 2>/dev/null || true
  relay "${stream_logs[2]}" "$off" 3>/dev/null
  [ "$rc" -ne 0 ] || rc=$(stream_code "$other")
  stream_rc=$rc
}

start_stream() {   # N ARGS...: stream N in the background: a subshell running its ssh to HOST (whose
  # session says its rsync's pid first: stop_stream's handle), recording the ssh's pid and then its
  # exit code in $logs (read there, not by `wait`: bash may have reaped the job)
  local n=$1 out=$logs/1.fifo
  shift
  [ "$n" -eq 1 ] || out=${stream_logs[2]}
  (
    "${ssh_argv[@]}" "$host" "echo \"stream pid \$\$\"; $(pull_line "$@" "$(src_arg blobs/)" "$(dest_arg blobs/)")" \
      </dev/null >"$out" 2>"$logs/$n.err" &
    echo "$!" >"$logs/ssh.$n"
    rc=0
    wait "$!" || rc=$?
    echo "$rc" >"$logs/rc.$n.tmp" && mv "$logs/rc.$n.tmp" "$logs/rc.$n"
  ) &
  stream_pids[n]=$!
}

stream_flags() {   # N: stream N's test-only --bwlimit (THUNDER_SYNC_STREAM_BWLIMIT)
  local k=${stream_bw[$(($1 - 1))]}
  [ "$k" -eq 0 ] || echo "--bwlimit=$k"
}

run_blobs() {   # RSYNC-ARGS... (without source and destination): the blobs pass, as one rsync, or
  # (split_blobs) as two side by side over the same daemon or peer ssh, stream 1 shown live, stream 2
  # once stream 1 ended (the progress lines of one file never interleave with another's)
  local tee_pid stream_rc
  split_blobs
  if [ "${#stream_a[@]}" -eq 0 ]; then
    run_pass 1 "$@" "$(src_arg blobs/)" "$(dest_arg blobs/)"
    blob_logs=("$here/blobs" "$logs/1")
    return 0
  fi
  stream_logs=("" "$logs/1" "$logs/1b")
  mkfifo "$logs/1.fifo"
  : >"$logs/1b"
  tee "$logs/1" <"$logs/1.fifo" &
  tee_pid=$!
  # shellcheck disable=SC2046  # stream_flags: one word or none
  start_stream 1 "$@" $(stream_flags 1) "${stream_b[@]}"
  # shellcheck disable=SC2046
  start_stream 2 "$@" $(stream_flags 2) "${stream_a[@]}"
  streams=1
  await_streams
  streams=""
  cat "$logs/1.err" "$logs/2.err" >&2
  pass_exit "$stream_rc"
  blob_logs=("$here/blobs" "$logs/1" "$here/blobs" "$logs/1b")
}

if [ "$transport" = rsyncd ]; then
  # the daemon lets in that address only; TCP_NODELAY (the daemon sets it too): each of the
  # protocol's small messages goes at once, not after the peer's delayed ACK (40 ms on Linux, up
  # to 200 ms elsewhere), which cost every pass a few of those waits
  flags_e=("--address=$host_addr" "--sockopts=TCP_NODELAY")
  origin="$from_host:$from_repo (rsync daemon at $from_addr)"
  sent_label='Total bytes received:'
  here=""
elif [ "$pull" -eq 1 ]; then
  flags_e=(-e "$peer_ssh" "--rsync-path=$peer_rsync_path")
  origin="$from_host:$from_repo"
  sent_label='Total bytes received:'   # the data came in to HOST's rsync, the one that reports
  here=""                              # nothing of the source's here to size an itemized file by
else
  flags_e=(-e "$ssh_cmd" "--rsync-path=$rsync_path")
  origin=$src_repo
  sent_label='Total bytes sent:'
  here=$src_repo
fi
flags=(-rlt -i --stats --progress "--exclude=*.incomplete" "--exclude=.rsync-partial/" "--exclude=.DS_Store"
       "--exclude=._*" "${flags_e[@]}" "--timeout=$io_timeout")
[ "$checksum" -eq 0 ] || flags+=(--checksum)
# a blob's name is its content hash: on the host, one of the right size is that blob (a flipped
# byte is --checksum's job), whatever its mtime; no delta pass re-reads a shard on both sides
blob_check=(--size-only)
[ "$checksum" -eq 0 ] || blob_check=()
[ -z "$bwlimit" ] || flags+=("--bwlimit=$bwlimit")
launchers_dir=$(cd -P "$(dirname "$0")" && pwd -P)
prep_script=$(cd -P "$launchers_dir/.." && pwd -P)/thunderlane/onhost/sync_prep.py

keep=()
host_linked=()
src_sizes=()
host_sizes=()
old_rsync=0
host_absent=0
revision=${revision:-}
if [ "$dry_run" -eq 1 ]; then
  [ "$transport" != rsyncd ] || { open_master; start_rsyncd; }
  prepare_host --dry-run
  [ "$transport" != rsyncd ] || await_rsyncd
  keep_linked
  echo "sync: $origin -> $host:$dest_repo (revision $revision)"
  if [ "$host_absent" -eq 1 ]; then
    echo "sync: dry run: $host:$dest_cache does not exist yet; everything would be sent"
    exit 0
  fi
  run_pass dry-run -n -L "${flags[@]}" "${blob_check[@]+"${blob_check[@]}"}" "${keep[@]+"${keep[@]}"}" \
    "$(src_arg blobs/)" "$(dest_arg blobs/)"
  run_pass dry-run-2 -n "${flags[@]}" --exclude=/blobs/ "$(src_arg "")" "$(dest_arg "")"
  echo "sync: dry run: would send $(file_data 'Total transferred file size:' "$here/blobs" "$logs/dry-run" \
       "$here" "$logs/dry-run-2") of file data"
  exit 0
fi
tree_pid=""   # pushing: the local tree lines are listed beside the host's preparation
if [ "$pull" -eq 0 ]; then sh -c "$tree_script" sh "$src_repo" >"$logs/tree-src" & tree_pid=$!; fi
# rsyncd: SRC's check and the daemon's start (over the peer ssh) run beside the host's preparation
[ "$transport" != rsyncd ] || { open_master; start_rsyncd; }
prepare_host
[ "$transport" != rsyncd ] || await_rsyncd
[ -z "$tree_pid" ] || wait "$tree_pid" || : >"$logs/tree-src"   # unsure: tree_differs says run them
keep_linked
# rsyncd (rsync 3 on both ends): every missing blob whole, not through the delta algorithm, which
# costs more CPU than the data link's time it could save (a blob's name is its content: one of the
# wrong size is resent whole anyway)
if [ "$transport" = rsyncd ] && [ "$old_rsync" -eq 0 ]; then flags+=(--whole-file); fi
echo "sync: $origin -> $host:$dest_repo (revision $revision)"

# blobs first (their content: a source blob that links into the shared store is sent as the file
# it names; the host receives a classic blob), then the snapshot links to them, then refs/main: a
# failed pass (a full disk, a dropped link) never leaves a link to a blob that did not arrive, nor
# a ref to a missing snapshot
run_blobs -L "${flags[@]}" "${blob_check[@]+"${blob_check[@]}"}" "${keep[@]+"${keep[@]}"}"
passes=("${blob_logs[@]}")
logs_run=("$logs/1")
[ "${#blob_logs[@]}" -eq 2 ] || logs_run+=("$logs/1b")
# each of the two later passes runs only when the host lacks a line of the source's tree there (a
# pass skipped had nothing to send: the order above holds for what is sent)
if tree_differs snapshots; then
  run_pass 2 "${flags[@]}" "$(src_arg snapshots/)" "$(dest_arg snapshots/)"
  passes+=("$here/snapshots" "$logs/2")
  logs_run+=("$logs/2")
fi
if tree_differs rest; then
  run_pass 3 "${flags[@]}" --exclude=/blobs/ "$(src_arg "")" "$(dest_arg "")"
  passes+=("$here" "$logs/3")
  logs_run+=("$logs/3")
fi
case "${#logs_run[@]}" in
  1) echo "sync: snapshots and refs already match on $host: nothing to send there" ;;
  2) if [ "${logs_run[1]}" = "$logs/2" ]; then echo "sync: refs already match on $host: no pass for them"
     else echo "sync: snapshots already match on $host: no pass for them"; fi ;;
esac
# the caller (thunderlane.transfer.parse_summary) reads this line. openrsync (macOS 15.4+) prints no
# Literal data / Total bytes sent lines: file data is then derived from the files itemized as sent
# ("N bytes (derived from K files itemized)"; pulling, their sizes are not known here: "unknown"),
# total sent is "unknown"
echo "sync: done: file data sent $(file_data 'Literal data:' "${passes[@]}")," \
     "total sent $(sum_stat "$sent_label" "${logs_run[@]}") bytes"
