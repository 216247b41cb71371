# thunderlane on-host hub-root memo: stdlib only (bundled into the probe after runs.py)
"""Where this interpreter's huggingface_hub keeps its cache, remembered between probes.

Asking huggingface_hub (``constants.HF_HUB_CACHE``) costs a full site start (every .pth file) and
the package's import: 20 ms or more on a host, longer than the whole fast scan, on every probe of a
host whose inventory entry names no ``hf_cache``. The answer is a function of the environment,
the home folder and the package's own code, so the first probe asks and keeps the answer in
``~/.cache/thunderlane/hub_root.json`` together with the sha256 of what it was a function of
(:func:`key`; an environment may hold secrets, never written down): the interpreter, every
environment variable but the ones ssh and a login set anew per session, the size and mtime of
the package's ``__init__.py`` and ``constants.py`` where a plain import finds them, and the mtime
of the folder holding the package (an install or a new .pth file there changes it). The key is
taken once, before any site start: a .pth file that changes os.environ must not make it differ
between the probe that writes the memo and the one that reads it. A later
probe whose key is equal reads the answer back; any difference (HF_HOME set, huggingface_hub
upgraded) and it asks the package again. The memo is read and written only in a
folder (and as a file) of this user's own that nobody else can write, as the probe loader's copy.
"""
import os
import sys

if __package__:  # imported from thunderlane.onhost; in a bundle, the modules above define these
    from .files import json_dumps, json_loads
    from .runs import site_packages

MEMO = "hub_root.json"
# set anew by sshd or a login for each session: never part of what the cache root depends on
VOLATILE_PREFIXES = ("SSH_", "XDG_SESSION_")
VOLATILE = frozenset({"_", "SHLVL", "PWD", "OLDPWD"})


def memo_dir():
    return os.path.join(os.path.expanduser("~"), ".cache", "thunderlane")


def owned(path):
    """Whether ``path`` exists, is no symlink, is ours and is writable by us alone."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_mode & 0o170000) != 0o120000 and st.st_uid == os.getuid() and not st.st_mode & 0o022


def package_files():
    """[(path, size, mtime_ns)] of huggingface_hub's ``__init__.py`` and ``constants.py`` in the first
    sys.path folder that holds the package (site-packages added as :func:`site_packages` does), then
    of that folder, or None: not there (a .pth file of a full site start may still bring it: ask)."""
    site_packages()
    for entry in sys.path:
        package = os.path.join(entry or ".", "huggingface_hub")
        paths = [os.path.join(package, n) for n in ("__init__.py", "constants.py")] + [entry or "."]
        try:
            stats = [os.stat(p) for p in paths]
        except OSError:
            continue
        return [[os.path.realpath(p), s.st_size, s.st_mtime_ns] for p, s in zip(paths, stats)]
    return None


def key(files):
    """What the cache root is a function of, as the sha256 of it (the environment may hold secrets:
    they are never written down)."""
    env = sorted((k, v) for k, v in os.environ.items()
                 if k not in VOLATILE and not k.startswith(VOLATILE_PREFIXES))
    text = json_dumps({"python": [sys.executable, sys.version], "home": os.path.expanduser("~"),
                       "env": env, "files": files})
    return _sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _sha256(data):
    try:  # the builtin module hashlib falls back to: no OpenSSL to load (as long as the rest of a probe)
        from _sha2 import sha256
    except ImportError:
        try:
            from _sha256 import sha256
        except ImportError:
            from hashlib import sha256
    return sha256(data)


def recall(files, digest):
    """The remembered root for ``files`` under :func:`key` ``digest``, or None."""
    folder = memo_dir()
    path = os.path.join(folder, MEMO)
    if files is None or not (owned(folder) and owned(path)):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            memo = json_loads(f.read())
        if memo["key"] == digest and isinstance(memo["root"], str) and memo["root"]:
            return memo["root"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        pass
    return None


def remember(files, digest, root, constants_file):
    """Keep ``root`` for the next probes, when the package that answered is the one :func:`package_files`
    found (else a later lookup could not tell it changed). Written whole under a temporary name
    and renamed; nothing is written where the folder is not safe."""
    folder = memo_dir()
    if files is None or os.path.realpath(constants_file or "") != files[1][0] or not owned(folder):
        return False
    tmp = os.path.join(folder, ".%s.tmp%d" % (MEMO, os.getpid()))
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
            f.write(json_dumps({"key": digest, "root": root}))
        os.replace(tmp, os.path.join(folder, MEMO))
        return True
    except OSError:
        return False
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def hub_cache_root():
    """huggingface_hub's ``HF_HUB_CACHE`` as this interpreter sees it, remembered (see above); None
    when the package is not installed."""
    files = package_files()
    digest = files and key(files)  # once, before site.main(): its .pth files may change os.environ
    root = recall(files, digest)
    if root is not None:
        return root
    site_packages(full=True)  # as a normal start finds the package
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    remember(files, digest, constants.HF_HUB_CACHE, getattr(constants, "__file__", None))
    return constants.HF_HUB_CACHE
