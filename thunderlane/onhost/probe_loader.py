# thunderlane on-host probe loader: stdlib only (the -c program of the lean probe; see onhost/__init__.py)
"""Runs the lean probe from the copy of its source a host keeps, so that its interpreter loads it
compiled (``__pycache__``) instead of compiling the whole source on every ssh session, which costs
more than the scan itself. The control side fills in NAME (from the source's digest) and SOURCE,
whose last line is the completion marker ``_PROBE_COMPLETE = NAME``.

The copy is ``~/.cache/thunderlane/<NAME>.py``, written whole (fsynced) under a temporary name and
renamed, and its name changes with every change of the source. It is loaded only if the folder
and the file are this user's own, not symlinks, not group- or world-writable, and it loads with
its marker and a ``main``: no copy yet (the first run after a change), or one that does not load,
and this run writes it anew (where the folder is safe) and runs SOURCE itself, as does a run that
cannot write it. The copy is loaded by its path, the folder never on sys.path (where a file of it
could shadow a stdlib module).

The control side sends this loader first without SOURCE (the *stub*, a tenth of the bytes): where
the copy is usable it answers; where it is not, the stub says so (NO_COPY on stderr, exit
NO_COPY_EXIT) and the control side sends the whole loader in the same ssh session.
"""
import os
import sys

NAME = "thunderlane_probe"
SOURCE = ""
NO_COPY = "thunderlane-probe: no usable kept copy; send the source"
NO_COPY_EXIT = 75  # EX_TEMPFAIL
HOME = os.path.join(os.path.expanduser("~"), ".cache", "thunderlane")


def safe(path):
    """Whether ``path`` exists, is no symlink, is ours and is writable by us alone."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_mode & 0o170000) != 0o120000 and st.st_uid == os.getuid() and not st.st_mode & 0o022


def load(path):
    """The module at ``path``, compiled once by the interpreter. The import system's own classes,
    which importlib.machinery re-exports (importing the importlib package costs a third of the
    interpreter's start), not importlib.util (whose spec_from_file_location this is: it imports
    contextlib and collections, as long again as the whole start)."""
    try:
        from _frozen_importlib import ModuleSpec
        from _frozen_importlib_external import SourceFileLoader
    except ImportError:  # an interpreter without them frozen
        from importlib.machinery import ModuleSpec, SourceFileLoader
    loader = SourceFileLoader(NAME, path)
    spec = ModuleSpec(NAME, loader, origin=path)
    spec.has_location = True  # spec.cached: __pycache__/NAME.*.pyc beside it
    module = type(sys)(NAME)
    module.__spec__, module.__loader__, module.__file__ = spec, loader, path
    sys.modules[NAME] = module
    keep, sys.dont_write_bytecode = sys.dont_write_bytecode, False  # our own folder: PYTHONDONTWRITEBYTECODE
    try:                                                              # would compile it every time
        loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = keep
    return module


def installed():
    """The kept copy, imported, or None: absent, unsafe, damaged (no marker, no main) or unreadable."""
    path = os.path.join(HOME, NAME + ".py")
    cache = os.path.join(HOME, "__pycache__")
    if not (safe(HOME) and safe(path)) or (os.path.lexists(cache) and not safe(cache)):
        return None
    try:
        probe = load(path)
        if getattr(probe, "_PROBE_COMPLETE", None) == NAME and callable(getattr(probe, "main", None)):
            return probe
    except Exception:  # noqa: BLE001 - unreadable or damaged: SOURCE itself answers
        pass
    sys.modules.pop(NAME, None)
    return None


def install():
    """Keep SOURCE as HOME/NAME.py for the next runs; False where it cannot be written or HOME is not safe."""
    tmp = os.path.join(HOME, ".%s.tmp%d" % (NAME, os.getpid()))
    try:
        os.makedirs(HOME, mode=0o700, exist_ok=True)
        if not safe(HOME):
            return False
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
            f.write(SOURCE)
            f.flush()
            os.fsync(f.fileno())  # renamed only once on disk: a crash leaves the old name or the whole copy
        os.replace(tmp, os.path.join(HOME, NAME + ".py"))
        return True
    except OSError:
        return False
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def finish(code):
    """Exit with ``code`` once stdout and stderr are flushed, without the interpreter's teardown
    (freeing every module and object, a last collection): an eighth of a probe's CPU on a host,
    spent on memory the process hands back anyway. The probe leaves no file open and starts no
    thread, so nothing else waits for a normal exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def run():
    probe = installed()
    if probe is not None:
        finish(probe.main(sys.argv[1:]))
    if not SOURCE:  # the stub: the control side sends the whole loader next
        sys.stderr.write(NO_COPY + "\n")
        sys.exit(NO_COPY_EXIT)
    install()  # the first run after a change of the source, or a damaged copy: kept anew
    exec(SOURCE, {"__name__": "__main__", "__package__": None})


if __name__ == "__main__":
    run()
