"""mirror-back: bring the writer's committed checkpoint home, verified, trusting nothing the writer
sends, and never replacing what was earned.

Under a lock per writer host and per run, in a private staging folder: only the regular files
the writer's checkpoint.json names (plus that file and the handoff reports) are pulled, by an
explicit list, with size caps, no links, no recursion. The staging folder is then read with
``lstat`` only: anything else is refused by name. Every file must match the recorded size and
sha256 before the staging folder takes the mirror's place, and a mirror of another run or of a
later step is replaced only with ``--force`` (kept as a dated copy beside it)."""
import json
import os
import re
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import checkpoint, itemized, layout, mirror_rules as rules, mirrorfs
from .evaluate.carry import carry as carry_evaluations
from .facts import thaw
from .fsutil import lock_holder, lock_note, real_folder, take_lock
from .onhost.files import safetensors_check
from .remote import MAX_OUTPUT, OutputTooLarge, capture, ssh_command
from .rsync_ssh import rsync_env, rsync_remote, rsync_shell
from .report import human_bytes, printable
from .window import lock_holder_of, profile_hosts, writer_facts
from .window.lock import parse_holder


class MirrorError(RuntimeError):
    pass


class MirrorBusy(MirrorError):
    """Another mirror-back holds the writer's or the run's lock, or another task (``holder``, a
    ``window.lock.Holder``, as the lock's note names it): this one touched nothing."""

    def __init__(self, message, holder=None):
        super().__init__(message)
        self.holder = holder


@dataclass
class MirrorResult:
    host: str
    remote_dir: str
    local_dir: str
    step: int
    files: int
    run_bytes: int
    literal_bytes: int | None
    seconds: float
    command: str
    run_id: str | None = None
    replaced: str | None = None  # the dated copy of a mirror --force replaced
    notes: list = field(default_factory=list)
    derived_from: int | None = None  # literal_bytes is the size of this many files itemized (openrsync)


def local_paths(inv, profile):
    """(mirror, staging root) under the local runs root; nothing outside it is ever written."""
    where = layout.local(inv)
    return where.mirror(profile.run_name), where.staging(profile.run_name)


def lock_paths(inv, writer, profile):
    """One lock per writer host (its mirror-backs never overlap) and one per run (its mirror)."""
    locks = layout.local(inv).root / ".locks"
    return [locks / f"mirror-back.host-{writer.name}.lock", locks / f"mirror-back.run-{profile.run_name}.lock"]


@contextmanager
def locked(paths, note=None):
    """Hold every lock in ``paths`` (in order) or raise :class:`MirrorBusy`, touching nothing.
    ``note``: who holds them, left in each (:func:`fsutil.take_lock`)."""
    taken = []
    try:
        for path in paths:
            state, owner = take_lock(path, os.getpid(), note)
            if state == "held":  # a lock without a note is a mirror-back's
                holder = parse_holder(lock_note(path), owner)
                who = holder.words() if holder else f"another mirror-back (pid {owner})"
                raise MirrorBusy(f"{who} holds {path.name}; nothing was touched: run it again when that one has "
                                 "ended", holder)
            taken.append(path)
        yield
    finally:
        for path in reversed(taken):
            if lock_holder(path) == ("held", os.getpid()):  # ours still: never another's lock
                mirrorfs.remove(path)


def mirror_back(inv, profile, force=False):
    """Bring the writer's committed step home; ``force`` replaces a mirror of another run or of a
    later step (kept as ``<name>.replaced-<UTC time>``). Raises :class:`MirrorError` saying why not."""
    t0 = time.monotonic()
    writer = profile_hosts(inv, profile)[0]
    mirror, staging_root = local_paths(inv, profile)
    with locked(lock_paths(inv, writer, profile)):
        notes = mirrorfs.recover(mirror, staging_root)
        result = _mirror_locked(inv, profile, force, mirror, staging_root)
    result.notes = notes + result.notes
    result.seconds = time.monotonic() - t0
    return result


def _mirror_locked(inv, profile, force, mirror, staging_root):
    writer, facts = writer_facts(inv, profile)
    _refuse_while_writing(inv, profile, writer, facts)
    step = checkpoint.committed_step(facts)
    g = checkpoint.gate(writer.name, facts, step)
    if not g.ok:
        raise MirrorError(f"{writer.name}: nothing verified to mirror: {g.detail}")
    record = thaw(facts.record)
    try:
        wants = rules.wanted(record, facts.checkpoint.sha256, facts.files)
    except rules.Refused as e:
        raise MirrorError(f"{writer.name}:{facts.run_dir}: {e}") from None
    refusal = rules.replacement_refusal(current_record(mirror), record)
    if refusal and not force:
        raise MirrorError(f"{refusal}; the mirror {mirror} is left as it is (fab mirror-back --force replaces "
                          f"it and keeps it as {mirror.name}.replaced-<UTC time>)")
    real_folder(staging_root, layout.local(inv).root)
    staging = Path(tempfile.mkdtemp(dir=staging_root, prefix="stage."))
    try:
        sent, argv, changed = _pull_verified(inv, writer, facts.run_dir, mirror, staging, wants)
        _same_record(writer, staging, record)
        mirrorfs.copy_new(staging / record["step_file"], staging / rules.ADAPTERS)
        keep = mirrorfs.dated_copy(mirror) if refusal and os.path.lexists(mirror) else None
        if not refusal:  # the same run: its evaluations of earlier steps stay (another run's stay in `keep`)
            carry_evaluations(mirror, staging)
        mirrorfs.swap(staging, mirror, keep_as=keep)
    finally:
        mirrorfs.remove(staging)
    return MirrorResult(writer.name, facts.run_dir, str(mirror), step, len(wants),
                        _bytes(mirror, wants), sent[0], 0.0, " ".join(argv),
                        run_id=record.get("run_id"), replaced=str(keep) if keep else None,
                        notes=changed + ([f"replaced {refusal}; the old mirror is {keep}"] if keep else []),
                        derived_from=sent[1])


def _bytes(folder, wants):
    return sum(os.lstat(folder / w.name).st_size for w in wants if os.path.lexists(folder / w.name))


def _refuse_while_writing(inv, profile, writer, facts):
    alive = facts.running
    state, pid, holder = lock_holder_of(inv, profile)
    if holder and not alive:
        raise MirrorError(f"{holder.words()} holds the window lock; run mirror-back after it ends")
    if alive or state == "held":
        who = f"ranks {alive} on {writer.name}" if alive else f"the chunk runner (pid {pid})"
        raise MirrorError(f"a window is still writing ({who}); run mirror-back after it ends")


def current_record(mirror):
    """The local mirror's checkpoint record: None without a mirror, a string saying why it
    cannot be read otherwise (read through no link)."""
    if not os.path.lexists(mirror):
        return None
    if not mirrorfs.is_real_dir(mirror):
        return f"{mirror} is not a folder"
    try:
        raw = mirrorfs.read_nofollow(mirror / rules.CHECKPOINT, rules.CHECKPOINT_CAP)
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"{rules.CHECKPOINT}: {e}"
    return data if isinstance(data, dict) else f"{rules.CHECKPOINT} is not a JSON object"


def _same_record(writer, staging, record):
    """The checkpoint.json that arrived is the record that chose the files (not merely a file with
    the sha256 the host reported beside it)."""
    try:
        staged = json.loads(mirrorfs.read_nofollow(staging / rules.CHECKPOINT, rules.CHECKPOINT_CAP))
    except (OSError, ValueError, RecursionError) as e:
        staged = f"unreadable ({printable(e)})"
    if staged != record:
        raise MirrorError(f"{writer.name}: the {rules.CHECKPOINT} that arrived is not the one the writer's probe "
                          "read; the local mirror is left as it was")


def _pull_verified(inv, writer, remote_dir, mirror, staging, wants):
    """Pull ``wants`` into ``staging`` (seeded from the mirror) and check every entry; a seeded
    file that turns out to differ from the writer's is pulled again once; an optional one the
    writer saved again meanwhile stays behind (:func:`drop_changed`). ((bytes, files), argv, notes):
    see :func:`sent_figure`"""
    linked = mirrorfs.seed(mirror, staging, wants)
    sent, argv = pull(inv, writer, remote_dir, staging, wants)
    bad = _checked(writer, staging, wants)
    notes = drop_changed(staging, wants, bad, spare=linked)
    again = [w for w in wants if w.name in bad and w.name in linked]
    if again and len(again) == len(bad):
        for w in again:
            os.unlink(staging / w.name)
        more, argv = pull(inv, writer, remote_dir, staging, again)
        sent = (None, None) if None in (sent[0], more[0]) else (sent[0] + more[0], _add(sent[1], more[1]))
        bad = _checked(writer, staging, wants)
        notes += drop_changed(staging, wants, bad)
    if bad:
        raise MirrorError(f"{writer.name}: the copy does not match the writer, the local mirror is left as "
                          f"it was: {'; '.join(bad.values())}")
    return sent, argv, notes


def drop_changed(staging, wants, bad, spare=()):
    """Optional wants in ``bad`` (not seeded: not in ``spare``) that arrived other than the probe
    saw them (saved again since): removed from ``staging`` and from ``bad``; a note for each."""
    notes = []
    for w in wants:
        if w.optional and w.name in bad and w.name not in spare and os.path.lexists(staging / w.name):
            os.unlink(staging / w.name)
            del bad[w.name]
            notes.append(f"{w.name} changed during mirror-back; run mirror-back again to bring it")
    return notes


def _checked(writer, staging, wants):
    try:
        return check_staged(staging, wants)
    except MirrorError as e:
        raise MirrorError(f"{writer.name}: {e}") from None


def rsync_argv(inv, host, remote_dir, staging, list_file, cap, ssh=None):
    """rsync 2.6.9 / openrsync flags only: an explicit list, times, a size cap, an I/O timeout (a
    host that stops answering ends it with exit 30); no -r, -l, -L; -i names each file received
    (openrsync's --stats prints no byte counts).
    ``ssh``: the ``-e`` value (default :func:`remote.ssh_command`; see :func:`rsync_ssh.rsync_shell`)."""
    return ["rsync", "-t", "-i", "--stats", f"--files-from={list_file}", f"--max-size={cap}",
            f"--timeout={inv.ssh.rsync_timeout}",
            "-e", ssh or ssh_command(inv, host), f"--rsync-path={host.rsync_path}",
            rsync_remote(host, f"{remote_dir}/"), f"{staging}/"]


def pull(inv, host, remote_dir, staging, wants):
    """One rsync of ``wants`` into ``staging``; the local rsync may not write a file larger than
    the largest cap (RLIMIT_FSIZE), whatever the writer's rsync claims. (:func:`sent_figure`, argv)"""
    cap = max(w.cap for w in wants)
    fd, list_file = tempfile.mkstemp(dir=Path(staging).parent, prefix="list.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(f"{w.name}\n" for w in wants))
    try:
        with rsync_shell(inv, host) as ssh:
            argv = rsync_argv(inv, host, remote_dir, staging, list_file, cap, ssh)
            # bounded as a whole: rsync's --timeout misses a host rsync stopped under a live sshd
            code, out, err = capture(argv, timeout=inv.ssh.deep_probe_timeout, env=rsync_env(),
                                     preexec_fn=lambda: _cap_files(cap))
    except subprocess.TimeoutExpired:
        raise MirrorError(f"{host.name}: rsync did not finish within ssh.deep_probe_timeout "
                          f"({inv.ssh.deep_probe_timeout}s; the host stopped answering?); stopped it, the local "
                          "mirror is left as it was") from None
    except OutputTooLarge:
        raise MirrorError(f"{host.name}: rsync printed more than {MAX_OUTPUT // 2**20} MiB; stopped it") from None
    finally:
        os.unlink(list_file)
    out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    if code < 0:
        raise MirrorError(f"{host.name}: rsync was stopped by signal {-code} (a file outgrew its "
                          f"cap of {cap} bytes?); the local mirror is left as it was")
    if code not in (0, 23, 24):  # 23/24: a file was skipped or vanished; the check names it
        raise MirrorError(f"{host.name}: rsync exit {code}: {printable(err.strip()[-300:])}")
    return sent_figure(out, staging), argv


def _cap_files(cap):
    import resource
    resource.setrlimit(resource.RLIMIT_FSIZE, (cap, cap))


def check_staged(staging, wants):
    """{name: problem} of the wanted files; anything in ``staging`` that is not a wanted regular
    file within its cap (a link, a folder, an extra file) is a :class:`MirrorError` naming it."""
    refused = [p for p in (rules.entry_problem(*e, wants) for e in mirrorfs.entries(staging)) if p]
    if refused:
        raise MirrorError(f"the writer sent what mirror-back does not take, nothing was kept: {'; '.join(refused)}")
    bad = {}
    for w in wants:
        path = staging / w.name
        if not os.path.lexists(path):
            if not w.optional:
                bad[w.name] = f"{w.name} did not arrive (over its cap of {w.cap} bytes, or gone from the writer)"
            continue
        size, sha = mirrorfs.sha256_nofollow(path)
        problem = rules.content_problem(w, size, sha)
        if problem is None and w.name.endswith(".safetensors"):
            whole, reason = safetensors_check(str(path))
            problem = None if whole else f"{w.name} is not a whole safetensors file: {reason}"
        if problem:
            bad[w.name] = problem
    return bad


def literal_bytes(stats):
    m = re.search(r"Literal data: ([\d,]+)", stats)
    return int(m.group(1).replace(",", "")) if m else None


def sent_figure(output, staging):
    """(rsync's Literal data, None); without it (openrsync prints no --stats figures) the sizes, as
    staged, of the files rsync itemized as received and their count; (None, None) if one is not there."""
    literal = literal_bytes(output)
    if literal is not None:
        return literal, None
    names = itemized.transferred(output, ">")
    if any("/" in n or n in (".", "..") for n in names):  # the writer's word: only flat names are ours
        return None, None
    try:
        return sum(os.lstat(Path(staging) / n).st_size for n in names), len(names)
    except OSError:
        return None, None


def _add(a, b):
    return None if a is None and b is None else (a or 0) + (b or 0)


def describe(result):
    lines = [f"{result.host}:{printable(result.remote_dir)} -> {result.local_dir}: run {printable(result.run_id)} "
             f"step {result.step}, "
             f"{result.files} files, {human_bytes(result.run_bytes)}; file data sent "
             f"{human_bytes(result.literal_bytes)}"
             + (f" (derived from {result.derived_from} files itemized)" if result.derived_from is not None else "")
             + f" in {result.seconds:.1f}s"]
    return "\n".join(lines + [f"  {printable(n)}" for n in result.notes])
