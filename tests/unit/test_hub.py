"""The local hub: huggingface_hub's own snapshot_download fills a cache from it, over loopback only,
and an interrupted download leaves on disk what the real client leaves."""
import filecmp
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir, snapshot_download
from huggingface_hub.errors import IncompleteSnapshotError

from tests.unit.test_fixture_model import nko_texts
from thunderlane.lab import client as lab_client
from thunderlane.lab import hub as lab_hub
from thunderlane.lab.fixtures import model as fixture
from thunderlane.lab.hub import HubServer, download, partial_over, sent_over

ROOT = Path(__file__).resolve().parents[2]
SHARD = "model-00001-of-00002.safetensors"
MIB = 2**20  # huggingface_hub writes a download to disk in blocks of 10 MiB (DOWNLOAD_CHUNK_SIZE)
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny fixture model (about 1 MB), built by hand: what the hub serves."""
    return fixture.build_model_cache(tmp_path_factory.mktemp("source"), nko_texts(), size_mb=1)


@pytest.fixture
def hub(built):
    with HubServer(built["snapshot_dir"], built["repo_id"], built["revision"]) as server:
        yield server


def blob_of(repo, name, built):
    return repo / "blobs" / built["files"][name]["blob"]


def partials(repo):
    return sorted((repo / "blobs").glob("*.incomplete"))


def resolve_requests(hub, method, name):
    return [r for r in hub.requests if r["method"] == method and r["path"].endswith(f"/{name}")]


def offline_env(cache):
    """A child that must find the model in `cache` without any network (a dead loopback endpoint
    in case something tries anyway)."""
    env = {k: v for k, v in os.environ.items() if not lab_hub.DROPPED_VARS.search(k)}
    return dict(env, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_ENDPOINT="http://127.0.0.1:9")


LOAD = """
import json, mlx_lm
model, tok = mlx_lm.load("mlx-community/gemma-4-e2b-4bit")
print(json.dumps({"model_type": model.model_type, "layers": len(model.layers)}))
"""


def test_snapshot_download_makes_the_fixture_cache(built, hub, tmp_path):
    result = download(sys.executable, tmp_path / "hub", hub.endpoint, built["repo_id"])
    assert result.ok, result.stderr
    repo = result.repo_dir
    assert (repo / "refs" / "main").read_text() == built["revision"]
    assert result.snapshot == str(repo / "snapshots" / built["revision"])
    for name, entry in built["files"].items():
        link = Path(result.snapshot) / name
        assert os.readlink(link) == f"../../blobs/{entry['blob']}"
        assert filecmp.cmp(link, Path(built["snapshot_dir"]) / name, shallow=False)
    assert sorted(p.name for p in (repo / "blobs").iterdir()) == sorted(e["blob"] for e in built["files"].values())
    info = scan_cache_dir(tmp_path / "hub")
    assert info.warnings == [] and not info.incomplete_files
    (scanned,) = info.repos
    assert scanned.repo_id == built["repo_id"]
    assert scanned.size_on_disk == sum(e["size"] for e in built["files"].values())
    loaded = subprocess.run([sys.executable, "-c", LOAD], env=offline_env(tmp_path / "hub"), cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout.splitlines()[-1])["model_type"] == "gemma4"


def test_the_client_asks_info_tree_then_head_and_get_per_file(built, hub, tmp_path):
    assert download(sys.executable, tmp_path / "hub", hub.endpoint, built["repo_id"]).ok
    api = f"/api/models/{built['repo_id']}"
    assert [r["path"] for r in hub.requests[:2]] == [
        f"{api}/revision/main", f"{api}/tree/{built['revision']}?recursive=true&expand=false"]
    for name in built["files"]:
        (head,), (get,) = resolve_requests(hub, "HEAD", name), resolve_requests(hub, "GET", name)
        assert head["path"] == f"/{built['repo_id']}/resolve/{built['revision']}/{name}"
        assert head["headers"]["Accept-Encoding"] == "identity" and "Range" not in get["headers"]
    assert len(hub.requests) == 2 + 2 * len(built["files"])
    assert all(r["status"] == 200 for r in hub.requests)
    assert not [h for r in hub.requests for h in r["headers"] if h.lower() in ("authorization", "cookie")]


def test_a_killed_download_leaves_its_traces_and_a_rerun_starts_the_shard_over(built, tmp_path):
    cache, size = tmp_path / "hub", built["files"][SHARD]["size"]
    snapshot = cache / Path(built["snapshot_dir"]).relative_to(Path(built["repo_dir"]).parent)
    with HubServer(built["snapshot_dir"], built["repo_id"], built["revision"], throttle={SHARD: 100_000}) as hub:
        mid_shard = sent_over(hub.endpoint, SHARD, 50_000)

        def mid_shard_and_the_rest_linked():  # the others are small: only the shard may be in flight
            return mid_shard() and all((snapshot / n).is_symlink() for n in built["files"] if n != SHARD)
        killed = download(sys.executable, cache, hub.endpoint, built["repo_id"],
                          kill_when=mid_shard_and_the_rest_linked)
        assert killed.killed and killed.returncode == -signal.SIGKILL
        repo, etag = killed.repo_dir, built["files"][SHARD]["blob"]
        (partial,) = partials(repo)
        assert re.fullmatch(rf"{etag}\.[0-9a-f]{{8}}\.incomplete", partial.name)
        assert partial.stat().st_size == 0, "under 10 MiB received: nothing written yet"
        assert (cache / ".locks" / repo.name / f"{etag}.lock").exists()
        assert not (repo / "snapshots" / built["revision"] / SHARD).exists()
        assert (repo / "trees" / f"{built['revision']}.json").exists()
        with pytest.raises(IncompleteSnapshotError):
            snapshot_download(built["repo_id"], cache_dir=cache, local_files_only=True)
        assert {f.file_path for f in scan_cache_dir(cache).incomplete_files} == {partial}
        hub.throttle.clear()
        hub.requests.clear()
        again = download(sys.executable, cache, hub.endpoint, built["repo_id"])
    assert again.ok, again.stderr
    (get,) = resolve_requests(hub, "GET", SHARD)
    assert "Range" not in get["headers"] and get["status"] == 200
    assert filecmp.cmp(blob_of(repo, SHARD, built), Path(built["snapshot_dir"]) / SHARD, shallow=False)
    assert blob_of(repo, SHARD, built).stat().st_size == size
    assert partials(repo) == [partial], "the orphan stays: its name is unique to the killed process"


def test_a_dropped_connection_is_resumed_with_range_from_the_last_10_mib(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    data = random.Random(0).randbytes(12 * MIB + 123)
    (source / "model.safetensors").write_bytes(data)
    etag, cut = hashlib.sha256(data).hexdigest(), int(10.5 * MIB)
    with HubServer(source, "lab/big", "b" * 40, throttle={"model.safetensors": 10 * MIB}) as hub:
        killed = download(sys.executable, tmp_path / "hub", hub.endpoint, "lab/big",
                          kill_when=partial_over(tmp_path / "hub" / "models--lab--big", 10 * MIB))
        (partial,) = partials(killed.repo_dir)
        assert killed.killed and partial.stat().st_size == 10 * MIB
        assert partial.read_bytes() == data[: 10 * MIB]
        hub.throttle.clear()
        hub.drop["model.safetensors"] = cut
        hub.requests.clear()
        again = download(sys.executable, tmp_path / "hub", hub.endpoint, "lab/big")
    assert again.ok, again.stderr
    first, resumed = resolve_requests(hub, "GET", "model.safetensors")
    assert "Range" not in first["headers"]
    assert (resumed["headers"]["Range"], resumed["status"]) == (f"bytes={10 * MIB}-", 206)
    assert (killed.repo_dir / "blobs" / etag).read_bytes() == data


def fetch(url, method="GET", **headers):
    """(status, headers, body) of one request, errors included, proxies bypassed."""
    try:
        with NO_PROXY.open(urllib.request.Request(url, method=method, headers=headers), timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_the_server_answers_like_the_hub(built, hub):
    base, rev = f"{hub.endpoint}/{built['repo_id']}/resolve/{built['revision']}", built["revision"]
    status, headers, body = fetch(f"{base}/config.json", "HEAD")
    assert (status, headers["X-Repo-Commit"]) == (200, rev)
    assert headers["ETag"] == f'"{built["files"]["config.json"]["blob"]}"'
    assert not [h for h in headers if h.lower().startswith("x-xet")] and body == b""
    status, headers, _ = fetch(f"{base}/{SHARD}", "HEAD")
    assert headers["X-Linked-Etag"] == f'"{built["files"][SHARD]["blob"]}"'
    assert headers["X-Linked-Size"] == headers["Content-Length"] == str(built["files"][SHARD]["size"])
    status, headers, body = fetch(f"{base}/{SHARD}", Range="bytes=-10")
    assert (status, body) == (206, (Path(built["snapshot_dir"]) / SHARD).read_bytes()[-10:])
    assert fetch(f"{base}/{SHARD}", Range="bytes=99999999-")[0] == 416
    assert fetch(f"{base}/nope.json")[1]["X-Error-Code"] == "EntryNotFound"
    assert fetch(f"{hub.endpoint}/api/models/{built['repo_id']}/revision/v9")[1]["X-Error-Code"] == "RevisionNotFound"
    tree = json.loads(fetch(f"{hub.endpoint}/api/models/{built['repo_id']}/tree/main")[2])
    lfs = {e["path"]: e["lfs"]["oid"] for e in tree if "lfs" in e}
    assert lfs == {n: e["blob"] for n, e in built["files"].items() if n.endswith(".safetensors")}


def test_the_command_line_prints_its_endpoint_and_serves_until_killed(built):
    argv = [sys.executable, "-m", "thunderlane.lab.hub", "--snapshot", built["snapshot_dir"],
            "--repo-id", built["repo_id"], "--revision", built["revision"], "--port", "0"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        endpoint = json.loads(proc.stdout.readline())["endpoint"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", endpoint)
        assert fetch(f"{endpoint}/api/models/{built['repo_id']}/revision/main")[0] == 200
        proc.terminate()
        assert proc.wait(timeout=10) == 0, "SIGTERM ends it cleanly"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_nothing_but_loopback(tmp_path, built):
    with pytest.raises(ValueError, match="loopback"):
        download(sys.executable, tmp_path, "https://huggingface.co", built["repo_id"])
    with pytest.raises(ValueError, match="loopback"):
        HubServer(built["snapshot_dir"], built["repo_id"], built["revision"], host="0.0.0.0")
    env = lab_hub.client_env(tmp_path, "http://127.0.0.1:1", {"HF_TOKEN": "hf_x", "HOME": str(tmp_path)})
    assert "HF_TOKEN" not in env and env["HF_HUB_DISABLE_XET"] == "1" and env["HOME"] == str(tmp_path)


# The lab's caches (thunderlane.lab.client) ------------------------------------------------------
HOSTS = ["mac4", "mac5"]


@pytest.mark.parametrize("spec, expected", [
    ("", {"local": "shared", "mac4": "classic", "mac5": "classic"}),
    ("classic", {"local": "classic", "mac4": "classic", "mac5": "classic"}),
    ("shared", {"local": "shared", "mac4": "shared", "mac5": "shared"}),
    ("mac4=shared", {"local": "shared", "mac4": "shared", "mac5": "classic"}),
    (" local = classic , mac5=shared ", {"local": "classic", "mac4": "classic", "mac5": "shared"}),
])
def test_layout_specs(spec, expected):
    assert lab_client.parse_layout(spec, HOSTS, "local=shared") == expected
    remembered = {"local": "shared", "mac4": "classic", "gone": "shared"}  # an earlier lab-up's
    assert lab_client.parse_layout(spec, HOSTS, remembered) == expected


@pytest.mark.parametrize("spec, why", [
    ("Shared", "give classic, shared"), ("local", "give classic, shared"), ("mac4=xet", "give classic, shared"),
    ("mac9=shared", "no lab host 'mac9'"), ("local=shared;mac4=shared", "give classic, shared"),
])
def test_bad_layout_specs_name_the_part(spec, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        lab_client.parse_layout(spec, HOSTS, "classic")


def test_fab_lab_up_refuses_a_bad_layout_with_exit_2(tmp_path):
    fab = str(Path(sys.executable).parent / "fab")
    p = subprocess.run([fab, "lab-up", "--layout", "mac4=xet"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "lab-up: --layout 'mac4=xet'" in p.stderr, p.stderr


def test_a_made_cache_is_whole_or_absent_and_made_once(built, tmp_path):
    fixtures, repo = tmp_path / "fixtures", Path(built["repo_dir"])
    with pytest.raises(lab_client.ClientError, match="snapshot_download"):
        lab_client.made(fixtures, repo, "/bin/false", "classic", "complete")
    (folder,) = fixtures.iterdir()
    assert list(folder.iterdir()) == [], "no half-made cache under any name"
    root = lab_client.made(fixtures, repo, sys.executable, "classic", "complete")
    record = json.loads((root.parents[3] / "made.json").read_text())
    assert record["listing"] == lab_client.listing(root) and record["in_flight"] == []
    assert lab_client.made(fixtures, repo, "/bin/false", "classic", "complete") == root, "made once, then kept"
    target = tmp_path / "host" / "hub"
    lab_client.place(root, target)
    assert lab_client.listing(target) == record["listing"], "placed with its links as the client made them"
