# thunderlane on-host sync preparation: stdlib only, Python 3.9+ (a stock Mac's python3 will do)
"""Run on the host by the sync launcher before any transfer, fed as source on stdin:

    python3 - CACHE_ROOT REPO_FOLDER [--dry-run] [--tree]

It checks that the repo folder and its lock folder are real folders of this cache (no link on the
way that would send rsync's writes elsewhere), removes this repo's stale leftovers and keeps those
of a live download, and lists the repo blobs that are links to a regular file (the hub's
shared-store links, which the sync keeps as they are). One line per finding on stdout:

    removed leftover <path>          (would remove leftover <path> with --dry-run)
    kept <path>: a download holds its lock
    linked <etag> <size>
    absent                           the cache root does not exist yet

A ``<etag>[.<id>].incomplete`` is stale when the hub's per-blob lock (``.locks/<repo folder>/
<etag>.lock``, which huggingface_hub holds with flock for the whole download) can be taken now,
without waiting; it is removed while that lock is held, so no download can start on it meanwhile.
The lock files stay: the client leaves one per blob after every download, and unlinking a lock
file another process has open would let two downloads hold "the" lock. rsync's own temp files
(``.<name>.XXXXXX``) are removed: the control machine's per-host lock keeps two syncs apart.
Nothing outside ``<repo folder>/blobs`` is ever removed: not another repo, not the shared store.
Exit 3 with the reason on stderr when a path is unsafe.
"""
import errno
import fcntl
import os
import re
import stat
import sys

TEMP = re.compile(r"^\..+\.[A-Za-z0-9]{6}$")      # rsync's own temp file: .<name>.XXXXXX
INCOMPLETE = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})(\.[0-9a-f]{8})?\.incomplete$")


class Unsafe(Exception):
    pass


def kind(path):
    """'dir', 'file', 'link', 'other' or None (absent), without following a link."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        return "link"
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def real_folder(path, root):
    """Refuse ``path`` unless it is absent or a real folder whose real path is ``root`` + its name."""
    found = kind(path)
    if found is None:
        return False
    if found != "dir" or os.path.realpath(path) != os.path.join(root, os.path.relpath(path, root)):
        raise Unsafe(f"{path} is not a folder of the cache (a link or a file); refusing to write into it")
    return True


def try_lock(path):
    """An open fd holding ``path``'s flock, None if a process holds it, -1 if there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))  # flock needs no write access
    except FileNotFoundError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def remove(path, shown, dry_run):
    print(("would remove" if dry_run else "removed") + f" leftover {shown}", flush=True)
    if not dry_run:
        os.unlink(path)


def clear_download(blobs, locks, etag, names, dry_run, folder):
    """Remove ``names`` (this etag's *.incomplete) unless a download holds the etag's lock."""
    lock = os.path.join(locks, f"{etag}.lock")
    fd = try_lock(lock) if kind(lock) in ("file", None) else None
    if fd is None:
        for name in names:
            print(f"kept {folder}/blobs/{name}: a download holds its lock", flush=True)
        return
    try:
        for name in names:
            remove(os.path.join(blobs, name), f"{folder}/blobs/{name}", dry_run)
    finally:
        if fd != -1:
            os.close(fd)


def prepare(root, folder, dry_run):
    root = os.path.realpath(root)
    repo, locks = os.path.join(root, folder), os.path.join(root, ".locks", folder)
    for path in (repo, os.path.join(repo, "blobs"), os.path.join(repo, "snapshots"), os.path.join(repo, "refs"),
                 os.path.join(root, ".locks"), locks):
        real_folder(path, root)
    blobs = os.path.join(repo, "blobs")
    names = sorted(os.listdir(blobs)) if kind(blobs) == "dir" else []
    downloads = {}
    for name in names:
        m, path = INCOMPLETE.match(name), os.path.join(blobs, name)
        if m and kind(path) == "file":
            downloads.setdefault(m.group(1), []).append(name)
        elif TEMP.match(name) and not name.startswith("._") and kind(path) == "file":
            remove(path, f"{folder}/blobs/{name}", dry_run)
        elif kind(path) == "link" and os.path.isfile(path):
            print(f"linked {name} {os.path.getsize(path)}", flush=True)
    for etag, found in sorted(downloads.items()):
        clear_download(blobs, locks, etag, found, dry_run, folder)
    if not dry_run:
        os.makedirs(blobs, exist_ok=True)


# the launcher's tree_script, line for line: what it leaves out, and the bytes a short plain file's
# content may hold for the line to carry it
SKIP_END = (b".incomplete", b"/.DS_Store")
SKIP_IN = (b"/._", b"/.rsync-partial/")
PLAIN = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._-")


def tree_paths(top):
    """What ``find . -path ./blobs -prune -o -name "*<newline>*" -prune -exec echo "?" \\; -o -print``
    prints in ``top``, unsorted: every entry but ``./blobs``, links not followed, a name with a
    newline as ``?`` (and not entered)."""
    out, folders = [b"."], [b"."]
    while folders:
        folder = folders.pop()
        try:
            names = os.listdir(os.path.join(top, folder))
        except OSError:
            continue
        for name in names:
            rel = folder + b"/" + name
            if rel == b"./blobs":
                continue
            if b"\n" in name:
                out.append(b"?")
                continue
            out.append(rel)
            if kind(os.path.join(top, rel)) == "dir":
                folders.append(rel)
    return out


def tree_line(top, rel):
    """The tree_script's line for entry ``rel`` (bytes), or None where it prints none."""
    if rel in (b".", b"./blobs") or rel.endswith(SKIP_END) or any(s in rel for s in SKIP_IN):
        return None
    if rel == b"?":
        return b"tree ? (a name with a newline)"
    path = os.path.join(top, rel)
    try:
        found = kind(path)
        if found == "link":
            target = os.readlink(path)
            return b"tree ? " + rel if b"\n" in target else b"tree l " + rel + b" " + target
        if found == "dir":
            return b"tree d " + rel
        if found == "file":
            size = os.path.getsize(path)
            content = b"?"
            if size <= 64:
                with open(path, "rb") as f:
                    content = f.read().rstrip(b"\n")  # as $(cat) keeps it
                content = content if set(content) <= PLAIN else b"?"
            return b"tree f " + rel + b" " + str(size).encode() + (b" " + content if content else b"")
    except OSError:
        pass
    return b"tree ? " + rel


def tree(repo):
    """The host's tree lines (``host-tree ...``), as the launcher's tree_script (sh) prints them on
    the source: one interpreter instead of a process per entry. Nothing for a folder not there."""
    top = os.fsencode(repo)
    if not os.path.isdir(top):
        return
    lines = (tree_line(top, rel) for rel in sorted(tree_paths(top)))  # LC_ALL=C sort: by bytes
    sys.stdout.flush()
    sys.stdout.buffer.write(b"".join(b"host-" + line + b"\n" for line in lines if line is not None))
    sys.stdout.buffer.flush()


def main(argv):
    flags = argv[2:]
    if len(argv) < 2 or "/" in argv[1] or any(f not in ("--dry-run", "--tree") for f in flags) or \
            len(set(flags)) != len(flags):
        print("usage: python3 - CACHE_ROOT REPO_FOLDER [--dry-run] [--tree]", file=sys.stderr)
        return 2
    root, folder, dry_run = argv[0], argv[1], "--dry-run" in flags
    if not os.path.isdir(root):
        print("absent", flush=True)
        if dry_run:
            return 0
        os.makedirs(os.path.join(root, folder, "blobs"))
    try:
        prepare(root, folder, dry_run)
    except Unsafe as e:
        print(f"sync: {e}", file=sys.stderr)
        return 3
    if "--tree" in flags:
        tree(os.path.join(root, folder))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
