"""mirror-back's local file work: look at staged entries with ``lstat`` only, never follow a link,
seed the staging folder from the verified mirror by hard links, and swap folders so that a crash
at any point leaves the old mirror, the new one, or a named copy of the old one, never nothing."""
import hashlib
import os
import re
import shutil
import stat
import time
from pathlib import Path

from .fsutil import fsync_dir, full_fsync

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def kind(st):
    """'file', 'link', 'folder' or 'other' from an lstat result."""
    if stat.S_ISLNK(st.st_mode):
        return "link"
    if stat.S_ISDIR(st.st_mode):
        return "folder"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


def entries(folder):
    """[(name, kind, size)] of ``folder``'s entries, by lstat: nothing is followed or descended."""
    out = []
    with os.scandir(folder) as it:
        for e in it:
            st = os.lstat(e.path)
            out.append((e.name, kind(st), st.st_size))
    return sorted(out)


def read_nofollow(path, limit=None):
    """The bytes of the regular file ``path`` (never through a link), at most ``limit``."""
    fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        return f.read() if limit is None else f.read(limit + 1)


def sha256_nofollow(path):
    """(size, sha256) of the regular file ``path``, opened without following a link."""
    fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    h, size = hashlib.sha256(), 0
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def is_real_dir(path):
    try:
        return kind(os.lstat(path)) == "folder"
    except FileNotFoundError:
        return False


def seed(mirror, staging, wants):
    """Hard-link the mirror's regular files that the staging folder wants (the size is right when
    known), so rsync's quick check sends nothing for them; returns the names linked. Links in the
    mirror are never followed; rsync replaces a changed file by a new one, never writes into it."""
    linked = []
    if not is_real_dir(mirror):
        return linked
    for w in wants:
        src = Path(mirror) / w.name
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            continue
        if kind(st) != "file" or st.st_size > w.cap or (w.size is not None and st.st_size != w.size):
            continue
        try:
            os.link(src, Path(staging) / w.name, follow_symlinks=False)
        except OSError:  # another file system, or no hard links there: rsync sends the file
            continue
        linked.append(w.name)
    return linked


def remove(path):
    """Remove ``path`` whatever it is; a link is removed, never followed."""
    if not os.path.lexists(path):
        return
    if kind(os.lstat(path)) == "folder":
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.unlink(path)


def copy_new(src, dst):
    """Copy the regular file ``src`` to ``dst``, which must not exist (O_EXCL, no link followed)."""
    fd_in = os.open(src, os.O_RDONLY | NOFOLLOW)
    fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644)
    with os.fdopen(fd_in, "rb") as fin, os.fdopen(fd_out, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        full_fsync(fout.fileno())


# fab evaluate's results (evaluate/run.py), and one kept aside when two clashed (evaluate/carry.py)
EVALUATIONS = re.compile(r"eval_step[0-9]+_(test|valid)(_first[0-9]+)?(\.[A-Za-z0-9-]{1,80})?\.json")


def carry_evaluations(mirror, staging):
    """Copy ``fab evaluate``'s result files of the current mirror into ``staging`` before a swap:
    a mirror-back of a later step of the same run replaces the adapters, never the record of how an
    earlier step did. Regular files only; names as evaluate writes them. The names copied."""
    carried = []
    for name, what, _ in entries(mirror) if os.path.isdir(mirror) and not os.path.islink(mirror) else []:
        if EVALUATIONS.fullmatch(name) and what == "file" and not os.path.lexists(Path(staging) / name):
            copy_new(Path(mirror) / name, Path(staging) / name)
            carried.append(name)
    return carried


def old_copy(mirror):
    """Where the mirror waits during a swap: restored if the new one never arrived."""
    return Path(mirror).with_name(f".{Path(mirror).name}.old")


def dated_copy(mirror, now=None):
    """``<name>.replaced-<UTC timestamp>`` beside the mirror (a suffix if that exists already)."""
    mirror = Path(mirror)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    path, n = mirror.with_name(f"{mirror.name}.replaced-{stamp}"), 1
    while os.path.lexists(path):
        n += 1
        path = mirror.with_name(f"{mirror.name}.replaced-{stamp}-{n}")
    return path


def folder_mode():
    """The mode a plain mkdir would give (0777 less the umask)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask


def swap(staging, mirror, keep_as=None):
    """Put the verified ``staging`` folder in the mirror's place. The old mirror goes to
    :func:`old_copy` (deleted once the new one is in place) or, when ``keep_as`` is given, there
    for good. Between the two renames a crash leaves the old mirror under one of those names."""
    mirror = Path(mirror)
    aside = Path(keep_as) if keep_as else old_copy(mirror)
    os.chmod(staging, folder_mode())  # private while unverified; a mirror like any other folder
    if os.path.lexists(mirror):
        os.rename(mirror, aside)
    os.rename(staging, mirror)
    fsync_dir(mirror.parent)
    if not keep_as:
        remove(aside)


def recover(mirror, staging_root):
    """Finish or undo a swap a crash interrupted, and drop unverified staging folders; say what
    was done. A leftover old copy is put back when there is no mirror, else (the new mirror was
    verified before its rename) removed."""
    mirror, notes = Path(mirror), []
    old = old_copy(mirror)
    if os.path.lexists(old):
        if not os.path.lexists(mirror):
            os.rename(old, mirror)
            fsync_dir(mirror.parent)
            notes.append(f"restored {mirror} from {old.name}, left by an interrupted swap")
        else:
            remove(old)
            notes.append(f"removed {old.name}, left by a swap that had finished")
    if os.path.lexists(staging_root):
        for e in entries(staging_root):
            remove(Path(staging_root) / e[0])
            notes.append(f"removed unverified staging {e[0]}")
    return notes
