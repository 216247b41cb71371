"""A stand-in for the Hugging Face Hub on loopback, so that the lab's caches are made by
huggingface_hub's own downloader (``snapshot_download``) rather than by hand. `HubServer` serves
one repo (a folder of files) at one commit with what huggingface_hub 2.4.0 asks for over HTTP:

  GET  /api/models/{repo_id}/revision/{rev}   repo info: ``sha`` (the commit) and ``siblings``
  GET  /api/models/{repo_id}/tree/{commit}    the file listing the client keeps as ``trees/<commit>.json``
  HEAD /{repo_id}/resolve/{commit}/{file}     X-Repo-Commit, ETag, X-Linked-Etag/-Size (LFS files)
  GET  /{repo_id}/resolve/{commit}/{file}     the bytes; ``Range: bytes=a-`` gives 206
  GET  /_lab/sent                             the lab's own: bytes sent so far, per file

No Xet headers are sent, so blobs land in the classic layout. `download` runs ``snapshot_download``
in a process of its own (a host's interpreter) and can SIGKILL it mid-file. ``python -m thunderlane.lab.hub
--snapshot DIR --repo-id ID --revision SHA --port 0`` prints ``{"endpoint": ...}`` and serves until killed.
"""
import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..onhost.files import sha256_file
from ..onhost.probe import git_blob_sha1_file

LFS_SUFFIXES = (".safetensors",)  # stored in LFS, as the fixture's builder (hub_layout) names them
LAB_ROUTE = "/_lab/sent"
CHUNK = 64 * 1024
POLL_SECONDS = 0.02


# The repo as the hub describes it --------------------------------------------------------------
@dataclass(frozen=True)
class HubFile:
    """One file of the served repo. `oid` is the git blob sha1 of what git stores (the file itself,
    or its LFS pointer); `lfs_sha256` is set for LFS files only."""
    path: str
    local: Path
    size: int
    oid: str
    lfs_sha256: str | None = None
    pointer_size: int | None = None

    @property
    def etag(self):
        """The name of the file's blob in a cache: sha256 for LFS files, git blob sha1 otherwise."""
        return self.lfs_sha256 or self.oid

    def tree_entry(self):
        """This file in the tree listing (``/api/models/{repo_id}/tree/{rev}``)."""
        entry = {"type": "file", "oid": self.oid, "size": self.size, "path": self.path}
        if self.lfs_sha256:
            entry["lfs"] = {"oid": self.lfs_sha256, "size": self.size, "pointerSize": self.pointer_size}
        return entry


def hub_file(path, local):
    """The file at `local`, served as `path`, described by hashing its bytes (and its LFS pointer's)."""
    size = local.stat().st_size
    if not path.endswith(LFS_SUFFIXES):
        return HubFile(path, local, size, git_blob_sha1_file(local))
    sha = sha256_file(local)
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n".encode()
    oid = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
    return HubFile(path, local, size, oid, sha, len(pointer))


def read_repo(folder):
    """{path in repo: HubFile} for every file under `folder`, symlinks followed, in path order."""
    folder = Path(folder)
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    if not paths:
        raise ValueError(f"no files to serve under {folder}")
    return {path: hub_file(path, folder / path) for path in paths}


def byte_range(header, size):
    """(start, end), inclusive, that a ``Range`` header asks of `size` bytes; None for the whole
    file (no header, or one this server ignores); ValueError when it cannot be satisfied."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    start = int(first) if first else max(size - int(last), 0)  # "bytes=-N": the last N bytes
    end = min(int(last), size - 1) if first and last else size - 1
    if start >= size or start > end:
        raise ValueError(f"range {header!r} outside {size} bytes")
    return start, end


def check_loopback(endpoint):
    """Refuse an endpoint that is not on this machine's loopback: the lab never goes out."""
    host = urlsplit(endpoint).hostname or ""
    if not (host == "localhost" or re.fullmatch(r"127(\.\d{1,3}){3}|::1", host)):
        raise ValueError(f"endpoint {endpoint!r} is not a loopback address")
    return endpoint


# Replies: what each route answers, decided without touching the socket ------------------------
@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes = b""
    file: HubFile | None = None
    span: tuple | None = None  # (start, end) of `file`, inclusive


def json_reply(obj, status=200, **headers):
    return Reply(status, {"Content-Type": "application/json", **headers}, json.dumps(obj).encode())


def not_found(code, message, **headers):
    return json_reply({"error": message}, 404, **{"X-Error-Code": code, "X-Error-Message": message}, **headers)


def file_reply(hub, file, range_header):
    """HEAD/GET of one file: the headers huggingface_hub reads, and which bytes to send."""
    headers = {"X-Repo-Commit": hub.revision, "ETag": f'"{file.etag}"', "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
    if file.lfs_sha256:
        headers.update({"X-Linked-Etag": f'"{file.lfs_sha256}"', "X-Linked-Size": str(file.size)})
    try:
        span = byte_range(range_header, file.size)
    except ValueError:
        return Reply(416, {**headers, "Content-Range": f"bytes */{file.size}"})
    if span is None:
        return Reply(200, headers, file=file, span=(0, file.size - 1))
    return Reply(206, {**headers, "Content-Range": f"bytes {span[0]}-{span[1]}/{file.size}"}, file=file, span=span)


def route(hub, raw_path, range_header):
    """The Reply for a request path, still URL-quoted (its query is not needed)."""
    api, resolve = f"/api/models/{hub.repo_id}", f"/{hub.repo_id}/resolve/"
    if raw_path == LAB_ROUTE:
        return json_reply(hub.sent())
    if raw_path.startswith(api + "/revision/") or raw_path == api:
        rev = unquote(raw_path[len(api + "/revision/"):]) if raw_path != api else "main"
        return hub.at(rev) or hub.info()
    if raw_path.startswith(api + "/tree/"):
        rev, _, folder = raw_path[len(api + "/tree/"):].partition("/")
        return hub.at(unquote(rev)) or hub.tree(unquote(folder))
    if raw_path.startswith(resolve):
        rev, _, path = raw_path[len(resolve):].partition("/")
        return hub.at(unquote(rev)) or hub.resolve(unquote(path), range_header)
    return not_found("RepoNotFound", f"Repository not found: {raw_path}")


class _Handler(BaseHTTPRequestHandler):
    server_version = "thunderlane-hub"

    def do_GET(self):
        self._serve(send_body=True)

    def do_HEAD(self):
        self._serve(send_body=False)

    def log_message(self, *args):
        pass  # the record is `HubServer.requests`

    def _serve(self, send_body):
        hub = self.server.hub
        url = urlsplit(self.path)
        reply = route(hub, url.path, self.headers.get("Range"))
        if url.path != LAB_ROUTE:
            hub.log(self.command, self.path, dict(self.headers), reply.status)
        length = reply.span[1] - reply.span[0] + 1 if reply.span else len(reply.body)
        try:
            self.send_response(reply.status)
            for name, value in {**reply.headers, "Content-Length": str(length)}.items():
                self.send_header(name, value)
            self.end_headers()
            if send_body and reply.file:
                hub.stream(self.wfile, reply.file, reply.span[0], length)
            elif send_body:
                self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (killed mid-file): nothing to tell it


# The server ------------------------------------------------------------------------------------
class HubServer:
    """One repo at one commit, served on loopback by a ThreadingHTTPServer in a background thread.

    snapshot: folder of the repo's files (symlinks followed). repo_id: e.g. "org/name".
    revision: the 40-hex commit the hub reports; "main" and the commit itself are accepted.
    throttle: {path in repo: bytes per second} sent slowly. drop: {path in repo: bytes}: the next
    GET of that file is cut off after so many bytes (once). Both may be changed while serving.
    `requests` lists every request: method, path, headers, status.
    """

    def __init__(self, snapshot, repo_id, revision, *, throttle=None, drop=None, host="127.0.0.1", port=0):
        check_loopback(f"http://{host}")
        self.repo_id, self.revision, self.files = repo_id, revision, read_repo(snapshot)
        self.throttle, self.drop, self.requests = dict(throttle or {}), dict(drop or {}), []
        self._address, self._lock, self._sent = (host, port), threading.Lock(), Counter()
        self._stopping, self._httpd, self._thread = threading.Event(), None, None

    @property
    def endpoint(self):
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self):
        self._httpd = ThreadingHTTPServer(self._address, _Handler)
        self._httpd.daemon_threads, self._httpd.hub = True, self
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop serving; a throttled transfer still running ends at its next block."""
        self._stopping.set()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def at(self, rev):
        """None if the hub knows `rev`, else the 404 the hub gives for an unknown revision."""
        return None if rev in ("main", self.revision) else not_found("RevisionNotFound", f"Invalid rev id: {rev}")

    def info(self):
        siblings = [{"rfilename": path} for path in self.files]
        return json_reply({"_id": self.revision[:24], "id": self.repo_id, "modelId": self.repo_id,
                           "sha": self.revision, "private": False, "gated": False, "disabled": False,
                           "tags": [], "siblings": siblings})

    def tree(self, folder):
        """Every file below `folder`, whether or not ``recursive`` is asked (the client always asks)."""
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        return json_reply([f.tree_entry() for p, f in self.files.items() if p.startswith(prefix)])

    def resolve(self, path, range_header):
        if path not in self.files:
            return not_found("EntryNotFound", f"{path} does not exist", **{"X-Repo-Commit": self.revision})
        return file_reply(self, self.files[path], range_header)

    def stream(self, out, file, start, length):
        """Send `length` bytes of `file` from `start`, paced by `throttle`, cut short by `drop`."""
        rate = self.throttle.get(file.path)
        with self._lock:
            cut = self.drop.pop(file.path, None)
        limit, done, began = length if cut is None else min(length, cut), 0, time.monotonic()
        with open(file.local, "rb") as src:
            src.seek(start)
            while done < limit and not self._stopping.is_set():
                block = src.read(min(CHUNK if not rate else max(rate // 50, 1), limit - done))
                if not block:
                    break
                out.write(block)
                done += len(block)
                with self._lock:
                    self._sent[file.path] += len(block)
                if rate:
                    self._stopping.wait(max(0.0, done / rate - (time.monotonic() - began)))

    def sent(self):
        """{path in repo: bytes sent so far}, all GETs counted."""
        with self._lock:
            return dict(self._sent)

    def log(self, method, path, headers, status):
        with self._lock:
            self.requests.append({"method": method, "path": path, "headers": headers, "status": status})


# Filling a cache with the real client -----------------------------------------------------------
DOWNLOAD_SCRIPT = """\
import json, sys
from huggingface_hub import snapshot_download
path = snapshot_download(sys.argv[1], revision=sys.argv[2] or None, token=False)
print(json.dumps({"snapshot": path}))
"""
CLIENT_DEFAULTS = {"HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
                   "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "0"}
DROPPED_VARS = re.compile(r"^(HF_|HUGGING_FACE_|TRANSFORMERS_OFFLINE$)|proxy$", re.IGNORECASE)


@dataclass(frozen=True)
class Download:
    """What one `download` process did. `killed`: SIGKILLed by `download` when `kill_when` held."""
    argv: tuple
    returncode: int
    killed: bool
    repo_dir: Path
    snapshot: str | None
    stdout: str
    stderr: str

    @property
    def ok(self):
        return self.returncode == 0 and not self.killed


def client_env(cache_root, endpoint, env=None):
    """The downloader's environment: ours without HF settings, tokens or proxies, then the
    defaults above, then `env` (e.g. HOME), then the loopback endpoint and the cache root."""
    base = {k: v for k, v in os.environ.items() if not DROPPED_VARS.search(k)}
    merged = {**base, **CLIENT_DEFAULTS, **(env or {})}
    merged.update(HF_ENDPOINT=check_loopback(endpoint), HF_HUB_CACHE=str(cache_root),
                  NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return {k: v for k, v in merged.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}


def sent_over(endpoint, path, nbytes):
    """A `kill_when` test: the hub at `endpoint` has sent `nbytes` of `path` (its /_lab/sent route).
    The client writes in 10 MiB blocks, so below that nothing of it has reached the disk yet."""
    opener, url = urllib.request.build_opener(urllib.request.ProxyHandler({})), check_loopback(endpoint) + LAB_ROUTE

    def reached():
        with opener.open(url, timeout=5) as response:
            return json.load(response).get(path, 0) >= nbytes
    return reached


def partial_over(repo_dir, nbytes):
    """A `kill_when` test: a ``blobs/*.incomplete`` file of the repo holds `nbytes` on disk."""
    def size(partial):
        try:
            return partial.stat().st_size
        except FileNotFoundError:  # finished and renamed meanwhile
            return -1
    return lambda: any(size(p) >= nbytes for p in Path(repo_dir).glob("blobs/*.incomplete"))


def download(python, cache_root, endpoint, repo_id, revision=None, *, env=None, kill_when=None, timeout=120):
    """Run ``snapshot_download(repo_id, revision)`` with interpreter `python` into `cache_root`
    from the hub at `endpoint`, in a process of its own. kill_when: a test polled every 20 ms
    (`sent_over`, `partial_over`); once true, SIGKILL the process. Returns a `Download`; raises
    TimeoutError (after killing it) if the process runs longer than `timeout` seconds."""
    argv = (str(python), "-c", DOWNLOAD_SCRIPT, repo_id, revision or "")
    proc = subprocess.Popen(argv, env=client_env(cache_root, endpoint, env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed, deadline = False, time.monotonic() + timeout
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"snapshot_download of {repo_id} still running after {timeout}s")
                if kill_when and not killed and kill_when():
                    proc.kill()
                    killed = True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = out.strip().splitlines()
    snapshot = json.loads(lines[-1])["snapshot"] if proc.returncode == 0 and lines else None
    repo_dir = Path(cache_root) / ("models--" + repo_id.replace("/", "--"))  # huggingface_hub's repo_folder_name
    return Download(argv, proc.returncode, killed, repo_dir, snapshot, out, err)


# Command line ----------------------------------------------------------------------------------
def _per_file(pairs):
    """{path: int} from PATH=NUMBER arguments."""
    return {path: int(number) for path, _, number in (pair.rpartition("=") for pair in pairs)}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Serve one repo folder as a local Hugging Face hub.")
    parser.add_argument("--snapshot", required=True, help="folder of the repo's files, e.g. snapshots/<commit>")
    parser.add_argument("--repo-id", required=True, help="the repo id served, e.g. org/name")
    parser.add_argument("--revision", required=True, help="the 40-hex commit reported for main")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    parser.add_argument("--throttle", action="append", default=[], metavar="PATH=BYTES_PER_SECOND")
    parser.add_argument("--drop", action="append", default=[], metavar="PATH=BYTES", help="cut one GET short")
    args = parser.parse_args(argv)
    hub = HubServer(args.snapshot, args.repo_id, args.revision, host=args.host, port=args.port,
                    throttle=_per_file(args.throttle), drop=_per_file(args.drop))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with hub:
        print(json.dumps({"endpoint": hub.endpoint, "pid": os.getpid()}), flush=True)
        signal.pause()


if __name__ == "__main__":
    main()
