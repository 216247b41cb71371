"""The lab's model caches, made by huggingface_hub's own client: ``snapshot_download`` (in the
host's interpreter, with a home of the host's shape) against the lab hub (``hub.py``) serving the
fixture model, and for the shared layout huggingface_hub's own ``publish_blob_to_shared_store``
with each LFS blob's real Xet hash (``hf_xet.hash_files``): the lab cannot serve the Xet protocol.

Each (layout, state) is made once per fixture revision under ``.lab/fixtures/client-<rev>/`` and
copied into a host with its links kept as they are, so a reseed costs a copy, not a download:
- ``complete``: a whole download (classic), then, for ``shared``, every LFS blob published.
- ``partial``: a real interrupted download. The hub throttles the weight shards and the client is
  SIGKILLed mid-file once every small file is linked. Classic: both shards in flight. Shared: the
  first shard in flight, the second finished and published into the store.
"""
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..fsutil import atomic_write
from .hub import HubServer, download, sent_over

LAYOUTS = ("classic", "shared")
STATES = ("complete", "partial")
RECIPE = 1  # bump when what a (layout, state) recipe makes changes, so old fixture caches are remade
CACHE_REL = ".cache/huggingface/hub"
THROTTLE = 20_000  # bytes per second of a shard in flight: a 1 MB model's shard takes ~25 s
IN_FLIGHT = 4096  # bytes of each throttled shard sent before the kill (under 10 MiB: none on disk)

PUBLISH_SCRIPT = """\
import json, os, re, sys
import hf_xet
from huggingface_hub.utils._shared_blobs import publish_blob_to_shared_store
cache, repo = sys.argv[1], sys.argv[2]
blobs = os.path.join(cache, repo, "blobs")
done = {}
for name in sorted(os.listdir(blobs)):
    path = os.path.join(blobs, name)
    if os.path.islink(path) or not re.fullmatch(r"[0-9a-f]{64}", name):
        continue  # only LFS blobs (64-hex etags) are Xet-backed on the hub
    (info,) = hf_xet.hash_files([path])
    if not publish_blob_to_shared_store(blob_path=path, xet_hash=info.hash, cache_dir=cache,
                                        expected_size=os.path.getsize(path)):
        sys.exit("huggingface_hub refused to publish " + path)
    done[name] = info.hash
print(json.dumps(done))
"""


class ClientError(RuntimeError):
    pass


def parse_layout(spec, names, default="classic"):
    """{host: layout} for local and `names` from `spec`: '' (the default), 'classic'|'shared' for
    every host, or 'host=layout,...' (the hosts not named keep the default's). `default`: a spec
    like `spec` or a {host: layout} (an earlier lab-up's); classic where it says nothing.
    ValueError names the part that is wrong."""
    hosts = ["local", *names]
    base = {h: "classic" for h in hosts}
    if isinstance(default, dict):
        base.update((h, v) for h, v in default.items() if h in base and v in LAYOUTS)
    else:
        base = _apply(default, hosts, base)
    return _apply(spec, hosts, base)


def _apply(spec, hosts, layouts):
    spec, layouts = (spec or "").strip(), dict(layouts)
    if spec in LAYOUTS:
        return {h: spec for h in hosts}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        host, eq, layout = (s.strip() for s in part.partition("="))
        if not eq or layout not in LAYOUTS:
            raise ValueError(f"--layout {part!r}: give classic, shared, or host=classic|shared[,...]")
        if host not in hosts:
            raise ValueError(f"--layout {part!r}: no lab host {host!r} (hosts: {', '.join(hosts)})")
        layouts[host] = layout
    return layouts


def listing(root):
    """{path under root: what it is} of a cache: 'link -> target', 'file N bytes' or 'dir'."""
    root, out = Path(root), {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = f"link -> {os.readlink(path)}"
        elif path.is_file():
            out[rel] = f"file {path.stat().st_size} bytes"
        else:
            out[rel] = "dir"
    return out


def made(fixtures, repo, python, layout, state):
    """The hub cache root of (layout, state) for the fixture repo `repo` (a classic repo folder),
    made by the client on first use. Returns the cache root (``.../home/.cache/huggingface/hub``)."""
    if layout not in LAYOUTS or state not in STATES:
        raise ValueError(f"no client cache recipe for {layout}/{state}")
    revision = (Path(repo) / "refs" / "main").read_text().strip()
    final = Path(fixtures) / f"client-{revision[:12]}-r{RECIPE}" / f"{layout}-{state}"
    if (final / "made.json").is_file():
        return final / "home" / CACHE_REL
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{layout}-{state}-"))
    try:
        record = _make(work, Path(repo), revision, python, layout, state)
        atomic_write(work / "made.json", json.dumps(record, indent=1, sort_keys=True) + "\n")
        try:
            os.rename(work, final)  # whole or not at all; another lab-up may have made it meanwhile
        except OSError:
            if not (final / "made.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / "home" / CACHE_REL


def _make(work, repo, revision, python, layout, state):
    home = work / "home"
    cache = home / CACHE_REL
    repo_id = _repo_id(repo.name)
    shards = sorted(p.name for p in (repo / "snapshots" / revision).iterdir() if p.name.endswith(".safetensors"))
    in_flight = shards if (state, layout) == ("partial", "classic") else shards[:1] if state == "partial" else []
    with HubServer(repo / "snapshots" / revision, repo_id, revision,
                   throttle={s: THROTTLE for s in in_flight}) as hub:
        kill_when = _mid_file(hub.endpoint, cache / repo.name / "snapshots" / revision, hub.files, in_flight) \
            if in_flight else None
        total = sum(f.size for f in hub.files.values())  # loopback, but a busy 2-core box: 5 MB/s at worst
        result = download(python, cache, hub.endpoint, repo_id, env={"HOME": str(home)}, kill_when=kill_when,
                          timeout=120 + total / 5e6)
    if result.killed != bool(in_flight) or (not in_flight and not result.ok):
        raise ClientError(f"snapshot_download of {repo_id} into {cache}: exit {result.returncode}, "
                          f"killed={result.killed}: {result.stderr.strip()[-800:]}")
    published = _publish(python, cache, repo.name, home) if layout == "shared" else {}
    return {"layout": layout, "state": state, "revision": revision, "in_flight": in_flight,
            "published": published, "listing": listing(cache), "made_at": int(time.time())}


def _mid_file(endpoint, snapshot, files, in_flight):
    """The kill test: every shard in flight has sent some bytes, every other file is linked."""
    sent = [sent_over(endpoint, name, IN_FLIGHT) for name in in_flight]
    others = [name for name in files if name not in in_flight]
    return lambda: all(os.path.lexists(snapshot / n) for n in others) and all(s() for s in sent)


def _publish(python, cache, folder, home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    p = subprocess.run([str(python), "-c", PUBLISH_SCRIPT, str(cache), folder], capture_output=True,
                       text=True, env=dict(env, HOME=str(home), HF_HUB_CACHE=str(cache)), timeout=120)
    if p.returncode:
        raise ClientError(f"publishing {cache}/{folder} to the shared store: {p.stderr.strip()[-800:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _repo_id(folder):
    """'models--org--name' -> 'org/name' (huggingface_hub's repo_folder_name, backwards)."""
    return folder.split("--", 1)[1].replace("--", "/")


def place(cache_root, target):
    """Copy a made cache to `target` (a host's hub cache root), links kept as the client made them,
    mtimes kept (copy2). Whatever was at `target` goes first."""
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(cache_root, target, symlinks=True)
