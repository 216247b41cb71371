# thunderlane on-host run facts: stdlib only (bundled into the probe after files.py)
"""A run directory on this host: versions, free disk, checkpoint.json, files (hashed), the ranks
that recorded their PIDs, and ``reap``, the probe's one action: ending those ranks."""
import os
import sys
import time

if __package__:  # imported from thunderlane.onhost; in a bundle, files.py defined these above
    from .files import CHECKPOINT, LANE_DIR, json_loads, safetensors_check, sha256_file

LANE_MARKER = "thunderlane-lane-train"  # in every rank's command line: reaping checks it


def read_json_file(path):
    """{present, sha256, data} of a small JSON file, or {present, error} when it is not JSON."""
    import hashlib
    if not os.path.isfile(path):
        return {"present": False}
    try:
        with open(path, "rb") as f:
            raw = f.read()
        return {"present": True, "sha256": hashlib.sha256(raw).hexdigest(),
                "data": json_loads(raw.decode("utf-8"))}
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return {"present": True, "error": f"not valid JSON: {e}"}


def lane_facts(runs_root, run_name, dists=()):
    """What train-window, the gate and mirror-back need of one host: versions (of ``dists`` too),
    free disk, the run directory's checkpoint and files (hashed), running ranks, leftover temp files."""
    run_dir = os.path.join(runs_root, run_name)
    out = {"run_dir": run_dir, "exists": os.path.isdir(run_dir), "versions": versions(dists),
           "free_bytes": _free_bytes(runs_root), "checkpoint": None, "files": {}, "ranks": [],
           "temp_files": []}
    if not out["exists"]:
        return out
    out["checkpoint"] = read_json_file(os.path.join(run_dir, CHECKPOINT))
    for name in sorted(os.listdir(run_dir)):
        path = os.path.join(run_dir, name)
        if name.startswith("."):
            if ".tmp" in name:
                out["temp_files"].append(name)
            continue
        if os.path.isfile(path) and not os.path.islink(path):
            out["files"][name] = _run_file(path, name)
    out["ranks"] = _ranks(os.path.join(run_dir, LANE_DIR))
    return out


def _run_file(path, name):
    entry = {"size": os.path.getsize(path), "sha256": sha256_file(path)}
    if name.endswith(".safetensors"):
        entry["whole"], entry["reason"] = safetensors_check(path)
    return entry


_SITE_RAN = []  # site.main() ran in this process (under python -S, once at most)


def site_packages(full=False):
    """Under ``python -S`` (the lean probe's start: site's .pth files can cost more than the scan),
    put on sys.path what site would for reading versions; True when that is all of it. A venv that
    leaves out the system's site-packages gets its own site-packages folder and sys.prefix, as
    site.venv() sets them, without running the folder's .pth files: those only append folders after
    it, and user site is off in such a venv (False: a name not found may be in such a folder).
    ``full``, or any other interpreter: site.main() itself, as at a normal start."""
    if not sys.flags.no_site or _SITE_RAN:
        return True
    import site
    prefix = None if full else _venv_prefix()
    if prefix is None:
        _SITE_RAN.append(True)
        site.main()
        return True
    sys.prefix = sys.exec_prefix = prefix
    sys.path.extend(d for d in site.getsitepackages([prefix]) if os.path.isdir(d) and d not in sys.path)
    return False


def _venv_prefix():
    """The venv folder, found as site.venv() finds it, when its pyvenv.cfg leaves out the system's
    site-packages; else None."""
    exe = os.environ.get("__PYVENV_LAUNCHER__") if sys.platform == "darwin" else None
    exe_dir = os.path.dirname(os.path.abspath(exe or sys.executable))
    prefix = os.path.dirname(exe_dir)
    for cfg in (os.path.join(exe_dir, "pyvenv.cfg"), os.path.join(prefix, "pyvenv.cfg")):
        if os.path.isfile(cfg):
            break
    else:
        return None
    system_site = "true"
    with open(cfg, encoding="utf-8") as f:
        for line in f:
            key, eq, value = line.partition("=")
            if eq and key.strip().lower() == "include-system-site-packages":
                system_site = value.strip().lower()
    return None if system_site == "true" else prefix


def versions(dists=()):
    """This interpreter's version and platform, and the installed version of mlx, mlx-lm and each
    distribution in ``dists`` (None where it is not installed). Read from the ``.dist-info`` folders
    on sys.path (:func:`dist_info_versions`); importlib.metadata, whose import costs more than the
    rest of a probe, only for a name those folders cannot settle."""
    settled = site_packages()
    out = {"python": sys.version.split()[0], "platform": sys.platform,
           "venv": sys.prefix != getattr(sys, "base_prefix", sys.prefix)}
    names = list(dict.fromkeys(("mlx", "mlx-lm", *dists)))
    found, unsure = dist_info_versions(names)
    if not settled and (unsure or len(found) < len(names)):  # a .pth file may add the folder it is in
        site_packages(full=True)
        found, unsure = dist_info_versions(names)
    if unsure:
        try:
            from importlib.metadata import PackageNotFoundError, version
        except ImportError:
            return out
        for dist in unsure:
            try:
                found[dist] = version(dist)
            except PackageNotFoundError:
                pass
    out.update((dist, found.get(dist)) for dist in names)
    return out


def _dist_key(name):
    """A distribution name as PEP 503 normalises it (``mlx_lm``, ``MLX-LM`` -> ``mlx-lm``)."""
    return "-".join(filter(None, name.replace("_", "-").replace(".", "-").lower().split("-")))


def dist_info_versions(names):
    """({name: version}, unsure names): each name's first ``<name>-<version>.dist-info`` along sys.path,
    as importlib.metadata would find it, its version from the folder's METADATA (whose Name must be
    that name). A name met first as ``.egg-info``, or whose METADATA does not say, is unsure
    (importlib.metadata decides it)."""
    want = {_dist_key(n): n for n in names}
    found, unsure = {}, []
    for entry in sys.path:
        try:
            listing = sorted(n for n in os.listdir(entry or ".") if n.endswith((".dist-info", ".egg-info")))
        except OSError:
            continue
        for item in listing:
            stem, dot, kind = item.rpartition(".")
            name = want.get(_dist_key(stem.split("-", 1)[0])) if dot and kind in ("dist-info", "egg-info") else None
            if name is None or name in found or name in unsure:
                continue
            meta = _metadata(os.path.join(entry or ".", item)) if kind == "dist-info" else {}
            version = meta.get("Version") if _dist_key(meta.get("Name", "")) == _dist_key(name) else None
            if version:
                found[name] = version
            else:
                unsure.append(name)
    return found, unsure


def _metadata(folder):
    """Name and Version from a dist-info folder's METADATA headers ({} when unreadable)."""
    out = {}
    try:
        with open(os.path.join(folder, "METADATA"), encoding="utf-8") as f:
            for line in f:
                key, colon, value = line.partition(":")
                if not line.strip() or len(out) == 2:
                    break
                if colon and key in ("Name", "Version"):
                    out[key] = value.strip()
    except (OSError, UnicodeDecodeError):
        return {}
    return out


def _free_bytes(path):
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path or "/")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def process_alive(pid):
    """Is ``pid`` a live training rank (its command line carries the lane's marker)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return LANE_MARKER.encode() in f.read()
    except OSError:
        import subprocess
        p = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True)
        return LANE_MARKER in p.stdout


def _ranks(lane_dir):
    ranks = []
    if not os.path.isdir(lane_dir):
        return ranks
    for name in sorted(os.listdir(lane_dir)):
        if name.startswith("rank") and name.endswith(".pid"):
            try:
                with open(os.path.join(lane_dir, name), encoding="utf-8") as f:
                    info = json_loads(f.read())
                pid = int(info["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            ranks.append({"file": name, "pid": pid, "alive": process_alive(pid)})
    return ranks


def reap(runs_root, run_name, grace=3.0):
    """The one thing the probe does: end this host's live training ranks of one run, by the PIDs
    they recorded (checked against the lane's marker), TERM then KILL. Returns what was ended."""
    import signal
    lane_dir = os.path.join(runs_root, run_name, LANE_DIR)
    ended = []
    for rank in _ranks(lane_dir):
        if not rank["alive"]:
            continue
        os.kill(rank["pid"], signal.SIGTERM)
        deadline = time.time() + grace
        while process_alive(rank["pid"]) and time.time() < deadline:
            time.sleep(0.1)
        if process_alive(rank["pid"]):
            os.kill(rank["pid"], signal.SIGKILL)
        ended.append(rank)
    return {"ended": ended, "left": [r for r in _ranks(lane_dir) if r["alive"]]}
