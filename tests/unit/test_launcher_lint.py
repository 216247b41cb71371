"""The launchers must run on macOS: bash 3.2, BSD tools, old rsync. Linux tests cannot show it,
so this lint (and shellcheck) stands guard."""
import shutil
import subprocess
from pathlib import Path

import pytest

from thunderlane.portability import scan

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = sorted((ROOT / "launchers").glob("*.sh")) + [ROOT / "bootstrap"]   # bootstrap: macOS's bash 3.2 too


def test_there_are_launchers():
    assert any(p.name == "sync_gemma4_e2b_cache_to_thunder.sh" for p in LAUNCHERS)


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_is_portable(path):
    assert scan(path.read_text()) == []


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_is_shellcheck_clean(path):
    exe = shutil.which("shellcheck")
    assert exe, "shellcheck is not installed (apt-get install shellcheck)"
    p = subprocess.run([exe, "-s", "bash", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


@pytest.mark.parametrize("line", [
    "mapfile -t xs < f", "declare -A seen", 'echo "${name,,}"', "du -sb dir", "stat -c %s f",
    "readlink -f x", "sed -i 's/a/b/' f", "sha256sum f", "rsync --info=progress2 a b",
    "rsync --append-verify a b", "rsync --mkpath a b", "grep -P x f", "date -d yesterday",
    "timeout 5 cmd", "find . -printf '%s'", "xargs -r rm",
])
def test_lint_catches_gnu_and_bash4(line):
    assert scan(line), line


@pytest.mark.parametrize("line", [
    "sed -i.bak 's/a/b/' f", "stat -f %z f", "readlink link", "shasum -a 256 f",
    "rsync -rlt --progress a b", "# mapfile in a comment", 'echo "${#xs[@]}"',
    'rsync --timeout="$io_timeout" a b', "--timeout) io_timeout=$2 ;;",  # rsync's option, not GNU timeout
])
def test_lint_accepts_portable_forms(line):
    assert scan(line) == []


def test_quoted_heredoc_text_is_not_code():
    assert scan("cat <<'EOF'\n  30 timeout, readlink -f\nEOF\nmapfile x") == [(4, "mapfile x", "mapfile/readarray are bash 4")]
