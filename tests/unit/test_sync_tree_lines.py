"""The sync launcher's tree lines (tree_script) and, in rsyncd mode, the daemon's port taken from
the stream the source's check shares with it (daemon_port): no name on the source can forge a line."""
import os
import re
import subprocess
import sys

from thunderlane import layout

TEXT = layout.SYNC.read_text(encoding="utf-8")
TREE_SCRIPT = re.search(r"^tree_script='(.*?)'$", TEXT, re.M | re.S).group(1)
DAEMON_PORT = re.search(r"^daemon_port\(\) \{.*?^\}$", TEXT, re.M | re.S).group(0)


def tree_lines(repo):
    r = subprocess.run(["sh", "-c", TREE_SCRIPT, "sh", str(repo)], capture_output=True, text=True, check=True)
    return r.stdout.splitlines()


def test_a_name_or_link_target_with_a_newline_is_one_tree_question_line(tmp_path):
    repo = tmp_path / "repo"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "config.json").write_text("{}")
    (repo / "snapshots" / "abc" / "x\nport 9").write_text("1")
    (repo / "snapshots" / "abc" / "d\nrefs").mkdir()
    (repo / "snapshots" / "abc" / "d\nrefs" / "main").write_text("1")
    (repo / "snapshots" / "abc" / "link").symlink_to("../../blobs/aa\nport 9\ntree f ./refs/main 1 1")
    (repo / "snapshots" / "abc" / "ok").symlink_to("../../blobs/aa")
    lines = tree_lines(repo)
    assert all(line.startswith("tree ") for line in lines), lines
    assert lines.count("tree ? (a name with a newline)") == 2
    assert "tree ? ./snapshots/abc/link" in lines and "tree l ./snapshots/abc/ok ../../blobs/aa" in lines
    assert "tree f ./snapshots/abc/config.json 2 ?" in lines and not [x for x in lines if "refs" in x]


def daemon_port(text, tmp_path):
    log = tmp_path / "rsyncd"
    log.write_text(text)
    r = subprocess.run(["bash", "-c", f'{DAEMON_PORT}\ndaemon_port "$1"', "bash", str(log)],
                       capture_output=True, text=True, check=True)
    return r.stdout.strip()


def test_the_daemons_port_is_the_first_port_line_after_the_checks_last_line(tmp_path):
    assert daemon_port("pwdir /tmp/d\nsrc-rev abc\ntree f ./a 1\nsrc-end\nport 32401\n", tmp_path) == "32401"
    forged = "pwdir /tmp/d\nport 1\nsrc-rev abc\nsrc-unsafe blobs/x (a\nsrc-end\nport 2\n)\nsrc-end\n"
    assert daemon_port(forged, tmp_path) == ""  # the daemon has not answered yet
    assert daemon_port(forged + "port 32400\nport 3\n", tmp_path) == "32400"
    assert daemon_port("port 32400\n", tmp_path) == ""  # no check seen: nothing is the daemon's yet


# --- the host's tree lines come from sync_prep.py --tree (one interpreter), the source's from
# tree_script (sh): the two must agree line for line, or every sync would run both later passes
PREP = layout.ROOT / "thunderlane" / "onhost" / "sync_prep.py"


def odd_repo(root):
    """A repo folder with every kind of entry tree_script has a rule for."""
    repo = root / "models--o--m"
    snap = repo / "snapshots" / ("a" * 40)
    (snap / "sub").mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "b1").write_bytes(b"x" * 100)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40 + "\n")
    (snap / "config.json").symlink_to("../../blobs/b1")
    (snap / "sub" / "deep.json").symlink_to("../../../blobs/b1")
    (snap / "dirlink").symlink_to("sub")
    (snap / "newline-target").symlink_to("../../blobs/b1\ntree f ./refs/main 41")
    files = {"plain.txt": b"v1.2_x-y\n\n", "odd.txt": b"a b", "big.txt": b"z" * 65, "empty": b"",
             "newlines": b"\n\n", "with\\backslash": b"1", "with space": b"ok", "caf\xc3\xa9": b"\xc3\xa9",
             "nul": b"a\x00b", "x.incomplete": b"1", ".DS_Store": b"1", "._x": b"1", "sixtyfour": b"q" * 64}
    for name, data in files.items():
        (snap / os.fsdecode(name.encode() if isinstance(name, str) else name)).write_bytes(data)
    (snap / ".rsync-partial").mkdir()
    (snap / ".rsync-partial" / "part").write_bytes(b"1")
    (snap / "blobs").mkdir()  # only the top blobs/ is left out
    (snap / "blobs" / "f").write_bytes(b"1")
    (snap / "name\nwith-newline").write_bytes(b"1")
    os.mkfifo(snap / "fifo")
    return repo


def test_the_hosts_tree_lines_from_sync_prep_are_tree_scripts(tmp_path):
    repo = odd_repo(tmp_path)
    sh = subprocess.run(["sh", "-c", TREE_SCRIPT, "sh", str(repo)], capture_output=True, check=True).stdout
    with open(PREP, "rb") as source:
        r = subprocess.run([sys.executable, "-S", "-", str(tmp_path), repo.name, "--tree"], stdin=source,
                           capture_output=True, check=True)
    py = [line[len(b"host-"):] for line in r.stdout.splitlines() if line.startswith(b"host-tree ")]
    # one deliberate difference: sh's $(cat) drops a NUL byte, and the line would carry content the
    # file does not hold; Python says "?" (a line the source's cannot match: the pass runs)
    nul = b"tree f ./snapshots/" + b"a" * 40 + b"/nul 3 "
    assert nul + b"?" in py and nul + b"ab" in sh.splitlines()
    assert [x for x in py if not x.startswith(nul)] == [x for x in sh.splitlines() if not x.startswith(nul)], (py, sh)
    assert len(py) > 15
    assert b"tree l ./snapshots/" + b"a" * 40 + b"/config.json ../../blobs/b1" in py
    assert b"tree f ./refs/main 41 " + b"a" * 40 in py and b"tree d ./snapshots/" + b"a" * 40 + b"/blobs" in py


def test_without_tree_sync_prep_prints_no_tree_lines_and_refuses_unknown_flags(tmp_path):
    repo = odd_repo(tmp_path)
    with open(PREP, "rb") as source:
        r = subprocess.run([sys.executable, "-S", "-", str(tmp_path), repo.name], stdin=source, capture_output=True)
    assert r.returncode == 0 and b"tree" not in r.stdout
    with open(PREP, "rb") as source:
        r = subprocess.run([sys.executable, "-S", "-", str(tmp_path), repo.name, "--tree", "--tree"], stdin=source,
                           capture_output=True)
    assert r.returncode == 2 and b"usage" in r.stderr


RSYNCD_ANSWERED = re.search(r"^rsyncd_answered\(\) \{.*?^\}$", TEXT, re.M | re.S).group(0)


def test_the_launchers_cheap_look_agrees_with_daemon_port(tmp_path):
    """await_rsyncd looks every 10 ms with rsyncd_answered (the shell reads the file itself) and takes
    the port from daemon_port once it says yes: the two must agree on every stream."""
    log = tmp_path / "rsyncd"
    streams = ["pwdir /tmp/d\nsrc-rev abc\ntree f ./a 1\nsrc-end\nport 32401\n",
               "pwdir /tmp/d\nport 1\nsrc-rev abc\nsrc-unsafe blobs/x (a\nsrc-end\nport 2\n)\nsrc-end\n",
               "pwdir /tmp/d\nport 1\nsrc-rev abc\nsrc-end\nport 2\n)\nsrc-end\nport 32400\nport 3\n",
               "port 32400\n", "src-end\nport x\n", "src-end\nport 12\nrsyncd-exit 0\n", ""]
    for text in streams:
        log.write_text(text)
        r = subprocess.run(["bash", "-c", f'{RSYNCD_ANSWERED}\nif rsyncd_answered "$1"; then echo yes; '
                                          f'else echo no; fi; echo "ended=$rsyncd_ended"', "bash", str(log)],
                           capture_output=True, text=True, check=True)
        said, ended = r.stdout.split()
        assert (said == "yes") == bool(daemon_port(text, tmp_path)), (text, r.stdout)
        assert (ended == "ended=1") == ("\nrsyncd-" in "\n" + text), (text, r.stdout)
