# thunderlane on-host probe: stdlib only (bundled after files.py and runs.py; see onhost/__init__.py)
"""Facts gathered on a host, sent as source to each host's interpreter
(``python -c <bundle> dataset|cache|lane|reap|links|rdma|macos|multi ...``); prints one JSON document. It
reads and never writes; the one exception, ``reap``, ends the lane's own training processes by their
PIDs (``links`` opens short-lived sockets on the ring's ports, see ``links.py``). (To
see whether a download holds a cache lock it takes a non-blocking flock and releases it at once.)
verify-cache's and verify-dataset's commands, and the peer key's facts, run a lean bundle of it
through ``probe_loader.py``, which keeps a copy of that bundle under ``~/.cache/thunderlane`` so the
host loads it compiled.

The judging of those facts (verdicts, parity with local) lives in ``dataset.py`` and ``cache.py``.
"""
import fcntl
import os
import sys
import time

if __package__:  # imported from thunderlane.onhost; in a bundle, the modules above define these
    from .files import CHUNK, HEX64, HexName, json_dumps, json_loads, read_stripped, safetensors_check, sha256_file
    from .runs import lane_facts, read_json_file, reap, versions
    from .store import check_link, finder_file, link_context, linked_blobs, repo_folder, store_facts, store_listed
    from .hubroot import hub_cache_root
    from .links import links_facts, rdma_facts
    from .macos import macos_command
    from .peer import peer_facts

DATA_FILES = ("train.jsonl", "valid.jsonl", "test.jsonl")
MANIFEST = "manifest.json"
HEX40 = HexName(40)
HEX8 = HexName(8)
CHAT_ROLES = {"system", "user", "assistant", "tool"}


# --- hashing -------------------------------------------------------------------------------------

def git_blob_sha1_file(path):
    """Hex git blob sha1 of a file: sha1(b"blob <size>\\0" + bytes), the hub's name for a small file."""
    import hashlib
    h = hashlib.sha1()
    h.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def blob_hash_matches(path, name):
    """Re-hash a blob against its name: (ok, actual). Names that are no hash cannot be checked."""
    if HEX64.fullmatch(name):
        actual = sha256_file(path)
    elif HEX40.fullmatch(name):
        actual = git_blob_sha1_file(path)
    else:
        return False, None
    return actual == name, actual


# --- dataset -------------------------------------------------------------------------------------

def row_format(row):
    """The mlx-lm format a row is in ('chat', 'completions', 'text'), or raise ValueError why not.
    mlx-lm picks a file's format from its first row: prompt+completion, then messages, then text."""
    if not isinstance(row, dict):
        raise ValueError("row is not a JSON object")
    if "prompt" in row and "completion" in row:
        if not isinstance(row["prompt"], str) or not isinstance(row["completion"], str):
            raise ValueError("prompt and completion must be strings")
        return "completions"
    if "messages" in row:
        _check_messages(row["messages"])
        return "chat"
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"]:
            raise ValueError("text must be a non-empty string")
        return "text"
    raise ValueError("no 'messages', 'prompt'+'completion' or 'text' field")


def _check_messages(messages):
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
            raise ValueError(f"message {i}: role must be one of {sorted(CHAT_ROLES)}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message {i}: content must be a string")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant turn to learn from")


def jsonl_facts(path):
    """Lines, bytes, sha256, row format and the first bad row of a JSONL file, in one pass."""
    import hashlib
    import json  # here: the cache probe never parses rows
    h = hashlib.sha256()
    size = lines = 0
    fmt = bad = None
    ends_with_newline = True
    with open(path, "rb") as f:
        for raw in f:
            lines += 1
            size += len(raw)
            h.update(raw)
            ends_with_newline = raw.endswith(b"\n")
            if bad is None:
                fmt, bad = _judge_row(raw, lines, fmt, json)
    if bad is None and lines and not ends_with_newline:
        bad = {"line": lines, "reason": "last line has no newline (truncated file?)"}
    if bad is None and lines == 0:
        bad = {"line": 0, "reason": "file is empty"}
    return {"lines": lines, "bytes": size, "sha256": h.hexdigest(), "format": fmt, "bad": bad, "checked": True}


def file_sums(path):
    """Lines, bytes and sha256 of a JSONL file, read in 1 MiB blocks, no row parsed (``checked``
    False): what a host reports when local validates the rows and equal bytes are equal rows."""
    import hashlib
    h = hashlib.sha256()
    size = lines = 0
    last = b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
            size += len(block)
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"  # an unterminated last line is a line, as jsonl_facts counts it
    return {"lines": lines, "bytes": size, "sha256": h.hexdigest(), "format": None, "bad": None, "checked": False}


def _judge_row(raw, line, fmt, json):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return fmt, {"line": line, "reason": f"not UTF-8 (byte {e.start})"}
    try:
        this = row_format(json.loads(text))
    except ValueError as e:
        return fmt, {"line": line, "reason": str(e) if not isinstance(e, json.JSONDecodeError)
                     else f"not JSON: {e.msg} at column {e.colno}"}
    if fmt is not None and this != fmt:
        return fmt, {"line": line, "reason": f"{this} row in a {fmt} file"}
    return this, None


def dataset_facts(root, rows=True):
    """Everything verify-dataset needs to know about one dataset root; ``rows`` False: sums only
    (:func:`file_sums`), every row left to be judged by local's verdict on the same bytes."""
    out = {"root": root, "exists": os.path.isdir(root), "files": {}, "manifest": None}
    if not out["exists"]:
        return out
    for name in DATA_FILES:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            out["files"][name] = {"present": False}
            continue
        try:
            out["files"][name] = dict(present=True, **(jsonl_facts(path) if rows else file_sums(path)))
        except OSError as e:
            out["files"][name] = {"present": False, "error": e.strerror}
    out["manifest"] = read_json_file(os.path.join(root, MANIFEST))
    return out


# --- HF cache ------------------------------------------------------------------------------------

def resolve_cache_root(configured=None):
    """The hub cache root as this interpreter sees it: (path, how it was found)."""
    if configured:
        return configured, "inventory"
    root = hub_cache_root()  # remembered on the host (hubroot.py): the import costs more than the scan
    if root is not None:
        return root, "huggingface_hub"
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"], "HF_HUB_CACHE"
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub"), "HF_HOME"
    return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub"), "default"


def cache_facts(cache_root, repo_id, deep=False, resolved_by="inventory"):
    """Everything verify-cache needs to know about one repo in one cache."""
    repo_dir = os.path.join(cache_root, repo_folder(repo_id))
    out = {"cache_root": cache_root, "resolved_by": resolved_by, "repo_dir": repo_dir,
           "exists": os.path.isdir(repo_dir), "ref": None, "snapshot_exists": False,
           "revisions": [], "files": {}, "blobs": {}, "linked": {}, "incomplete": [], "locks": [],
           "shards": {}, "index_error": None, "deep": None, "shared_store": store_facts(cache_root)}
    out["locks"] = _locks(os.path.join(cache_root, ".locks", repo_folder(repo_id)))
    if not out["exists"]:
        return out
    where = link_context(cache_root, repo_id, out["shared_store"])
    out["blobs"], out["incomplete"] = _blobs(os.path.join(repo_dir, "blobs"))
    out["linked"] = linked_blobs(where)  # store-linked blobs (``blobs`` skips links), by etag
    snaps = os.path.join(repo_dir, "snapshots")
    out["revisions"] = sorted(n for n in (os.listdir(snaps) if os.path.isdir(snaps) else ()) if not finder_file(n))
    out["ref"] = read_stripped(os.path.join(repo_dir, "refs", "main"))
    if not out["ref"] or not HEX40.fullmatch(out["ref"]):
        return out
    snap = os.path.join(snaps, out["ref"])
    out["snapshot_exists"] = os.path.isdir(snap)
    if out["snapshot_exists"]:
        out["files"] = _snapshot_files(snap, where)
        out["shards"], out["index_error"] = _shards(snap, out["files"])
        if deep:
            out["deep"] = _rehash(repo_dir, out["files"])
    return out


def _blobs(blob_dir):
    blobs, incomplete = {}, []
    if not os.path.isdir(blob_dir):
        return blobs, incomplete
    for name in sorted(os.listdir(blob_dir)):
        path = os.path.join(blob_dir, name)
        if finder_file(name) or not os.path.isfile(path) or os.path.islink(path):
            continue  # a link is a shared-store blob: judged through the snapshot entry that uses it
        size = os.path.getsize(path)
        if name.endswith(".incomplete") or name.startswith("."):  # hub or rsync temp leftovers
            incomplete.append(_leftover(blob_dir, name, size))
        else:
            blobs[name] = size
    return blobs, incomplete


def _leftover(blob_dir, name, size):
    """A ``*.incomplete`` (huggingface_hub 2.x: ``<etag>.<8 hex>.incomplete``, unique per process) or
    an rsync temp file; ``finished``: the blob it was becoming is in place (through a store link too),
    so it is an orphan a killed download left, which the hub's client never reuses."""
    etag = incomplete_etag(name)
    finished = bool(etag) and os.path.isfile(os.path.join(blob_dir, etag))
    return {"name": name, "size": size, "blob": etag, "finished": finished}


def incomplete_etag(name):
    """The etag of a hub download's temp name, ``<etag>[.<8 hex>].incomplete``, else None."""
    stem, dot, rest = name.partition(".")
    if rest != "incomplete" and not (len(rest) == 19 and rest.endswith(".incomplete") and HEX8.fullmatch(rest[:8])):
        return None
    return stem if dot and (HEX40.fullmatch(stem) or HEX64.fullmatch(stem)) else None


def lock_held(path):
    """Whether a process holds the lock file now (huggingface_hub's filelock takes flock on it).
    Tested by a non-blocking flock of our own, on a read-only descriptor, released at once: nothing
    is written. A lock nobody holds is only a file the client keeps after every download."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _locks(lock_dir):
    now = time.time()
    found = []
    for dirpath, _, names in os.walk(lock_dir):
        for name in names:
            if name.endswith(".lock") and not finder_file(name):
                path = os.path.join(dirpath, name)
                age = now - os.path.getmtime(path)
                found.append({"name": name, "age_s": int(age), "held": lock_held(path)})
    return sorted(found, key=lambda x: x["name"])


def _snapshot_files(snap, where):
    files = {}
    for dirpath, dirnames, names in os.walk(snap):
        dirnames.sort()
        for name in sorted(n for n in names if not finder_file(n)):
            path = os.path.join(dirpath, name)
            files[os.path.relpath(path, snap)] = _snapshot_entry(path, where)
    return files


def _snapshot_entry(path, where):
    """A snapshot file: link, blob (the etag), size through the links, dangling, the shared-store entry
    its blob links to; ``escapes`` and ``refusal`` for any other link leaving the repo folder."""
    entry = {"link": None, "blob": None, "size": None, "dangling": False, "escapes": False,
             "store": None, "store_listed": None, "refusal": None}
    if os.path.islink(path):
        target = os.readlink(path)
        entry.update(link=target, blob=os.path.basename(target))
        entry["store"], entry["refusal"] = check_link(path, target, where)
        entry["escapes"] = entry["refusal"] is not None
        if not os.path.isfile(path):
            entry["dangling"] = True
            return entry
        if entry["store"]:
            entry["store_listed"] = store_listed(where, entry["store"], entry["blob"])
    elif not os.path.isfile(path):
        return entry
    entry["size"] = os.path.getsize(path)
    return entry


def _shards(snap, files):
    """Every shard the index names, checked for structure; a lone model.safetensors otherwise."""
    index_path = os.path.join(snap, "model.safetensors.index.json")
    names, error = [], None
    if "model.safetensors.index.json" in files:
        try:
            with open(index_path, encoding="utf-8") as f:
                names = sorted(set(json_loads(f.read())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            error = f"model.safetensors.index.json unreadable: {e}"
    elif "model.safetensors" in files:
        names = ["model.safetensors"]
    else:
        error = "no model.safetensors.index.json and no model.safetensors"
    shards = {}
    for name in names:
        path = os.path.join(snap, name)
        if not os.path.isfile(path):
            shards[name] = {"ok": False, "reason": "missing"}
        else:
            ok, reason = safetensors_check(path)
            shards[name] = {"ok": ok, "reason": reason}
    return shards, error


def _rehash(repo_dir, files):
    """Each blob's content, through a store link if any, against its name (the etag)."""
    out = {}
    for entry in files.values():
        blob = entry["blob"]
        if not blob or entry["dangling"] or entry["escapes"] or blob in out:
            continue
        ok, actual = blob_hash_matches(os.path.join(repo_dir, "blobs", blob), blob)
        out[blob] = {"ok": ok, "actual": actual}
    return out


# --- entry ---------------------------------------------------------------------------------------

USAGE = ("usage: probe.py dataset ROOT [--sums] | cache REPO_ID CACHE_ROOT|- [--deep]"
         " | lane RUNS_ROOT RUN_NAME [DIST...] | reap RUNS_ROOT RUN_NAME"
         " | versions [DIST...] | links JSON | rdma | macos TOOLS|- | peer | multi JSON-LIST-OF-THESE\n")


def command(argv):
    """The facts one command asks for, or None if it is not a command."""
    if argv[:1] == ["dataset"] and (len(argv) == 2 or argv[2:] == ["--sums"]):
        return dataset_facts(argv[1], rows=len(argv) == 2)
    if argv[:1] == ["cache"] and len(argv) in (3, 4):
        root, how = resolve_cache_root(None if argv[2] == "-" else argv[2])
        return cache_facts(root, argv[1], deep="--deep" in argv[3:], resolved_by=how)
    if argv[:1] == ["lane"] and len(argv) >= 3:  # then the distributions whose versions to report
        return lane_facts(argv[1], argv[2], argv[3:])
    if argv[:1] == ["versions"]:
        return versions(argv[1:])
    if argv[:1] == ["reap"] and len(argv) == 3:
        return reap(argv[1], argv[2])
    if argv[:1] in (["links"], ["rdma"], ["macos"]) and not {"links_facts", "macos_command"} <= set(globals()):
        return None  # the lean bundle (onhost.PROBE_LEAN) carries neither links nor macos
    if argv[:1] == ["links"] and len(argv) == 2:  # the ring's data path (onhost/links.py)
        return links_facts(json_loads(argv[1]))
    if argv == ["rdma"]:
        return rdma_facts()
    if argv[:1] == ["macos"] and len(argv) == 2:  # the firewall, caffeinate, F_FULLFSYNC (onhost/macos.py)
        return macos_command(argv[1])
    if argv == ["peer"]:  # the home and the peer key under it (onhost/peer.py)
        return peer_facts()
    if argv[:1] == ["multi"] and len(argv) == 2:  # several commands in one ssh session
        subs = json_loads(argv[1])
        if not all(isinstance(a, list) and a[:1] != ["multi"] for a in subs):
            return None
        results = [command(a) for a in subs]
        return None if None in results else {"results": results}
    return None


def main(argv):
    """Print the facts of one command (see USAGE) as JSON."""
    facts = command(argv)
    if facts is None:
        sys.stderr.write(USAGE)
        return 2
    facts["python"] = sys.version.split()[0]
    sys.stdout.write(json_dumps(facts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
