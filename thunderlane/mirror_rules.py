"""What mirror-back may bring home and when it may replace the local mirror: pure rules over the
writer's facts and the two checkpoint records, tested without a host.

Only regular files come home, each named here with a size cap: ``checkpoint.json`` itself, the
files it names (format 2 ``files``: step adapters, step state, ``adapter_config.json``) at exactly
their recorded size and sha256, the handoff reports the writer holds (optional, capped), and
fab evaluate's results there (``--on``: optional, capped, at the size and sha256 the probe saw).
"""
from dataclasses import dataclass

from . import checkpoint
from .mirrorfs import EVALUATIONS
from .report import printable

CHECKPOINT = "checkpoint.json"
ADAPTERS = "adapters.safetensors"  # mlx-lm's fixed name: recreated at home from the step file
REPORTS = ("handoff_report.md", "handoff_report.json")
CHECKPOINT_CAP = 1 << 20
REPORT_CAP = 8 << 20
EVAL_CAP = 256 << 20  # fab evaluate's result: every row's texts (a 100k-row split is some 50 MiB)
OWN_NAMES = (CHECKPOINT, ADAPTERS, *REPORTS)  # never taken from checkpoint.json's list
OWN_FOLDED = {n.casefold() for n in OWN_NAMES}
MAX_NAMED = 1 << 40  # 1 TiB: no adapter or optimizer state comes near; a cap rlimit can express


class Refused(RuntimeError):
    """mirror-back will not go on; the message says why, naming the file, run or step."""


@dataclass(frozen=True)
class Want:
    """One file to bring home: at most ``cap`` bytes; ``sha256``/``size`` when they are known."""
    name: str
    cap: int
    sha256: str | None = None
    size: int | None = None
    optional: bool = False


def wanted(record, checkpoint_sha256, writer_files):
    """The files to pull, checkpoint.json first. ``record`` is the writer's checkpoint.json,
    ``writer_files`` the probe's {name: RunFile}. A named file whose size on the writer is not
    the recorded one is refused before anything moves."""
    try:
        named = checkpoint.named_files(record)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise Refused(f"{CHECKPOINT} does not list its files usably: {printable(e)}") from None
    wants = [Want(CHECKPOINT, CHECKPOINT_CAP, checkpoint_sha256)]
    folded = [n.casefold() for n in named]
    for name, (sha, size) in sorted(named.items()):
        if name.casefold() in OWN_FOLDED or folded.count(name.casefold()) > 1:  # APFS folds case
            raise Refused(f"{CHECKPOINT} lists {printable(name)}, a name mirror-back writes itself or "
                          "lists twice (case aside)")
        if size > MAX_NAMED:
            raise Refused(f"{CHECKPOINT} records {size} bytes for {printable(name)}, over the {MAX_NAMED} "
                          "bytes mirror-back takes for one file")
        have = writer_files.get(name)
        if have is not None and have.size != size:
            raise Refused(f"{printable(name)} is {have.size} bytes on the writer, {CHECKPOINT} records {size}")
        wants.append(Want(name, size, sha, size))
    for name in REPORTS:
        have = writer_files.get(name)
        if have is not None and have.size <= REPORT_CAP:
            wants.append(Want(name, REPORT_CAP, optional=True))
    taken = {w.name for w in wants}
    for name, have in sorted(writer_files.items()):  # fab evaluate --on's results, as the probe hashed them
        if EVALUATIONS.fullmatch(name) and name not in taken and have.size <= EVAL_CAP:
            wants.append(Want(name, EVAL_CAP, have.sha256, have.size, optional=True))
    return tuple(wants)


def entry_problem(name, kind, size, wants):
    """Why a staged entry may not come home (None if it may): ``kind`` is 'file', 'link',
    'folder' or 'other', as ``lstat`` says."""
    want = {w.name: w for w in wants}.get(name)
    shown = printable(name)
    if kind == "link":
        return f"{shown} is a symbolic link"
    if kind == "folder":
        return f"{shown} is a folder"
    if kind != "file":
        return f"{shown} is not a regular file"
    if want is None:
        return f"{shown} is not a file mirror-back asked for"
    if size > want.cap:
        return f"{shown} is {size} bytes, over its cap of {want.cap}"
    return None


def content_problem(want, size, sha256):
    """Does a staged regular file hold what the writer's checkpoint.json (or, for an optional
    file, the writer's probe) promised?"""
    if want.size is not None and size != want.size:
        said = "the writer's probe saw" if want.optional else f"{CHECKPOINT} records"
        return f"{want.name} is {size} bytes, {said} {want.size}"
    if want.sha256 is not None and sha256 != want.sha256:
        return f"{want.name} sha256 {sha256[:12]} differs from the writer's {want.sha256[:12]}"
    return None


def step_of(record):
    step = record.get("step") if hasattr(record, "get") else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def replacement_refusal(current, incoming):
    """Why the local mirror (``current``: its checkpoint record, None when there is no mirror, or a
    string saying why it cannot be read) may not be replaced by the writer's ``incoming`` record,
    or None. Another run_id, or a later step, is kept unless the operator forces it."""
    if current is None:
        return None
    new = f"run {printable(incoming.get('run_id'))} at step {step_of(incoming)}"
    if isinstance(current, str):
        return f"the local mirror cannot be read ({current}); the writer holds {new}"
    old = f"run {printable(current.get('run_id'))} at step {step_of(current)}"
    if current.get("run_id") != incoming.get("run_id"):
        return f"the local mirror holds {old}, the writer another run: {new}"
    old_step, new_step = step_of(current), step_of(incoming)
    if old_step is None or new_step is None:
        return f"the local mirror holds {old}, the writer {new}: the steps cannot be compared"
    if old_step > new_step:
        return f"the local mirror holds {old}, later than the writer's {new}"
    return None
