"""fab evaluate's result files across a mirror-back. The writer's own (``fab evaluate --on``) come
home with the step (``mirror_rules.wanted``); the mirror's are carried into the new one
(``mirrorfs.carry_evaluations``). When both hold a name with different bytes, neither is lost: the
newer evaluation (its ``evaluated_at``; a file without one is the older) keeps the name and the
other stays beside it as ``<name>.<where it ran>-<when>.json``."""
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


def alt_name(name, when, on):
    """``eval_step5_test.json`` -> ``eval_step5_test.mac4-20261130T012600Z.json``."""
    part = ALT_PART.sub("-", f"{on}-{when or 'undated'}").strip("-")[:80]
    return f"{name[:-len('.json')]}.{part}.json"


def settle(mirror, staging, name):
    """Both hold ``name``: keep both evaluations; the newer under ``name``. The names written."""
    old, new = Path(mirror) / name, Path(staging) / name
    if mirrorfs.sha256_nofollow(old) == mirrorfs.sha256_nofollow(new):
        return []
    (old_when, old_on), (new_when, new_on) = stamp(old), stamp(new)
    if old_when > new_when:  # the mirror's is the newer: the writer's steps aside
        aside = Path(staging) / alt_name(name, new_when, new_on)
        if os.path.lexists(aside):
            os.unlink(new)
        else:
            os.rename(new, aside)
        mirrorfs.copy_new(old, new)
        return [name, aside.name]
    aside = Path(staging) / alt_name(name, old_when, old_on)
    if os.path.lexists(aside):
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
