"""The sync launcher's tree lines (tree_script) and, in rsyncd mode, the daemon's port taken from
the stream the source's check shares with it (daemon_port): no name on the source can forge a line."""
import re
import subprocess

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
