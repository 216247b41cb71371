# thunderlane on-host probe loader: stdlib only (the -c program of the lean probe; see onhost/__init__.py)
"""Runs the lean probe from the copy of its source a host keeps, so that its interpreter loads it
compiled (``__pycache__``) instead of compiling the whole source on every ssh session, which costs
more than the scan itself. The control side fills in NAME (from the source's digest) and SOURCE.

The copy is ``~/.cache/thunderlane/<NAME>.py``, written whole under a temporary name and renamed:
a copy is either absent or complete, and its name changes with every change of the source. No
copy yet (the first run after a change), or one that does not load: this run writes it anew and
runs SOURCE itself, as does a run that cannot write it (as every run did before).
"""
import os
import sys

NAME = "thunderlane_probe"
SOURCE = ""
HOME = os.path.join(os.path.expanduser("~"), ".cache", "thunderlane")


def installed():
    """The kept copy, imported (compiled once by the interpreter), or None."""
    if not os.path.isfile(os.path.join(HOME, NAME + ".py")):
        return None
    sys.path.insert(0, HOME)
    keep, sys.dont_write_bytecode = sys.dont_write_bytecode, False  # our own folder: PYTHONDONTWRITEBYTECODE
    try:                                                              # would compile it every time
        return __import__(NAME)
    except Exception:  # noqa: BLE001 - unreadable or damaged: SOURCE itself answers
        sys.modules.pop(NAME, None)
        return None
    finally:
        sys.path.remove(HOME)
        sys.dont_write_bytecode = keep


def install():
    """Keep SOURCE as HOME/NAME.py for the next runs; False where it cannot be written."""
    tmp = os.path.join(HOME, ".%s.tmp%d" % (NAME, os.getpid()))
    try:
        os.makedirs(HOME, mode=0o700, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(SOURCE)
        os.replace(tmp, os.path.join(HOME, NAME + ".py"))
        return True
    except OSError:
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run():
    probe = installed()
    if probe is not None:
        sys.exit(probe.main(sys.argv[1:]))
    install()  # the first run after a change of the source, or a damaged copy: kept anew
    exec(SOURCE, {"__name__": "__main__", "__package__": None})


if __name__ == "__main__":
    run()
