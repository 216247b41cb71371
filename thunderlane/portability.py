"""The launchers run on the users' Macs: bash 3.2, BSD tools, rsync 2.6.9 or openrsync.
This lint finds GNU-only and bash-4-only constructs in them (tests run on Linux, where they work)."""
import re
import sys
from pathlib import Path

RULES = [
    (r"\bmapfile\b|\breadarray\b", "mapfile/readarray are bash 4"),
    (r"\bdeclare\s+-[a-zA-Z]*[An]|\blocal\s+-n\b|\btypeset\s+-A", "associative arrays / namerefs are bash 4"),
    (r"\$\{[A-Za-z_][A-Za-z0-9_]*(,,?|\^\^?)\}", "case-changing expansion ${x,,} is bash 4"),
    (r"\bcoproc\b|\|&|&>>", "coproc, |& and &>> are bash 4"),
    (r"\$\{[A-Za-z_][A-Za-z0-9_]*@[QEPAa]\}", "${x@Q} transformations are bash 4.4"),
    (r"\bdu\s+-[a-zA-Z]*b", "du -b is GNU"),
    (r"\bstat\s+(-[a-zA-Z]*c|--format|--printf)", "stat -c is GNU (BSD: stat -f)"),
    (r"\breadlink\s+-[a-zA-Z]*[fem]", "readlink -f is GNU"),
    (r"\bsed\s+(-[a-zA-Z]*\s+)*-i(\s|$)(?!\s*'')", "sed -i without a suffix is GNU"),
    (r"\bsed\s+-[a-zA-Z]*r\b|\bsed\s+--", "sed -r / long options are GNU (use -E)"),
    (r"\bgrep\s+(-[a-zA-Z]*P|--perl)", "grep -P is GNU"),
    (r"\bdate\s+(-[a-zA-Z]*d\b|--date)", "date -d is GNU (BSD: date -j -f)"),
    (r"(?<![-\w])(sha256sum|sha1sum|md5sum|numfmt|realpath|timeout|nproc|tac)\b", "GNU coreutils only"),
    (r"\bfind\b.*\s-(printf|regextype)\b", "find -printf is GNU"),
    (r"\bxargs\s+(-[a-zA-Z]*r|--no-run-if-empty)", "xargs -r is GNU"),
    (r"--info=|--append-verify|--mkpath|--outbuf|--copy-as|--checksum-choice|--zc\b|--cc\b",
     "rsync flag missing from rsync 2.6.9 / openrsync"),
    (r"\bwait\s+-n\b", "wait -n is bash 4.3"),
    (r"\[\[[^]]*\s-v\s", "[[ -v ]] is bash 4.2"),
]
COMPILED = [(re.compile(p), why) for p, why in RULES]


def code_part(line):
    """The line without a trailing comment (good enough for our launchers: no '#' in strings
    except in ${#x} and $#)."""
    return re.sub(r"(^|\s)#.*$", "", line)


QUOTED_HEREDOC = re.compile(r"<<-?\s*['\"]([A-Za-z_]+)['\"]")


def scan(text):
    """[(line number, line, reason)] for every non-portable construct. The bodies of quoted
    here-documents (<<'EOF': literal text such as usage lines) are not code and are skipped."""
    hits, end = [], None
    for n, line in enumerate(text.splitlines(), 1):
        if end is not None:
            end = None if line.strip() == end else end
            continue
        code = code_part(line)
        m = QUOTED_HEREDOC.search(code)
        end = m.group(1) if m else None
        for rx, why in COMPILED:
            if rx.search(code):
                hits.append((n, line.strip(), why))
    return hits


def main(paths):
    bad = 0
    for path in paths:
        for n, line, why in scan(Path(path).read_text()):
            print(f"{path}:{n}: {why}: {line}")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
