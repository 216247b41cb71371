"""fab evaluate's result files across a mirror-back. The writer's own (``fab evaluate --on``) come
home with the step (``mirror_rules.wanted``); the mirror's are carried into the new one
(``mirrorfs.carry_evaluations``). When both hold a name with different bytes, neither is lost: the
newer evaluation (its ``evaluated_at``; a file without one is the older) keeps the name and the
other stays beside it as ``<name>.<where it ran>-<when>.json`` (``-2``, ``-3``... when that is taken
too), a name ``mirrorfs.EVALUATIONS`` matches: the next mirror-back carries it on."""
import json
import os
import re
from pathlib import Path

from .. import mirrorfs

ALT_PART = re.compile(r"[^A-Za-z0-9-]+")


def stamp(path):
    """(evaluated_at, on) of the result file ``path``; ("", "unknown") where it does not say."""
    try:
        data = json.loads(mirrorfs.read_nofollow(path).decode("utf-8"))
    except (OSError, ValueError):
        return "", "unknown"
    data = data if isinstance(data, dict) else {}
    when, on = data.get("evaluated_at"), data.get("on")
    return (when if isinstance(when, str) else ""), (on if isinstance(on, str) and on else "unknown")


def alt_name(name, when, on, number=1):
    """``eval_step5_test.json`` (or an aside of it, ``eval_step5_test.<...>.json``), evaluated on
    mac4 at 2026-11-30T01:26:00+00:00 -> ``eval_step5_test.mac4-2026-11-30T01-26-00-00-00.json``;
    ``number`` 2 and on: ``...-00-00-2.json``."""
    part = ALT_PART.sub("-", f"{on}-{when or 'undated'}").strip("-")[:72]
    return f"{name.split('.')[0]}.{part}{f'-{number}' if number > 1 else ''}.json"


def free_alt(mirror, staging, name, when, on, keep):
    """(the aside for ``keep``'s bytes in ``staging``, True if a file of that name holds them
    already there or in ``mirror``, carried then): never a name either holds other bytes under."""
    want = mirrorfs.sha256_nofollow(keep)
    for number in range(1, 1000):
        names = alt_name(name, when, on, number)
        held = [mirrorfs.sha256_nofollow(p) for p in (Path(staging) / names, Path(mirror) / names)
                if os.path.lexists(p)]
        if not held or held == [want] or held == [want, want]:
            return Path(staging) / names, bool(held)
    raise OSError(f"{staging}: no free name beside {name}")


def settle(mirror, staging, name):
    """Both hold ``name``: keep both evaluations; the newer under ``name``. The names written."""
    old, new = Path(mirror) / name, Path(staging) / name
    if mirrorfs.sha256_nofollow(old) == mirrorfs.sha256_nofollow(new):
        return []
    (old_when, old_on), (new_when, new_on) = stamp(old), stamp(new)
    if old_when > new_when:  # the mirror's is the newer: the writer's steps aside
        aside, there = free_alt(mirror, staging, name, new_when, new_on, new)
        if there:
            os.unlink(new)
        else:
            os.rename(new, aside)
        mirrorfs.copy_new(old, new)
        return [name, aside.name]
    aside, there = free_alt(mirror, staging, name, old_when, old_on, old)
    if there:
        return []
    mirrorfs.copy_new(old, aside)
    return [aside.name]


def carry(mirror, staging):
    """The mirror's evaluations into ``staging`` before the swap (names written), settling a name
    both hold with :func:`settle`."""
    if not os.path.isdir(mirror) or os.path.islink(mirror):
        return []
    written = []
    for name, what, _ in mirrorfs.entries(mirror):
        theirs = Path(staging) / name  # checked as a regular file by then (check_staged)
        if mirrorfs.EVALUATIONS.fullmatch(name) and what == "file" and os.path.lexists(theirs):
            written += settle(mirror, staging, name)
    return written + mirrorfs.carry_evaluations(mirror, staging)
