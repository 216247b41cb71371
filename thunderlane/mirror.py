"""mirror-back: bring the writer's run directory home, verified, without ever replacing a good
local copy by a torn one. rsync pulls into a staging folder beside the mirror (unchanged files are
hard-linked from the current mirror, so a second run sends nothing), every file is checked against
the writer's sha256, and only then does the staging folder take the mirror's place."""
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass

from . import checkpoint, layout
from .facts import RunFacts
from .onhost import runs
from .remote import ssh_command
from .report import human_bytes
from .window import lock_state, writer_facts

EXCLUDES = ["--exclude=/.lane/", "--exclude=.*.tmp*"]


class MirrorError(RuntimeError):
    pass


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


def local_paths(inv, profile):
    """(mirror, staging) under the local runs root; nothing outside it is ever written."""
    where = layout.local(inv)
    return where.mirror(profile.run_name), where.staging(profile.run_name)


def mirror_back(inv, profile):
    t0 = time.monotonic()
    writer, facts = writer_facts(inv, profile)
    _refuse_while_writing(inv, profile, writer, facts)
    step = checkpoint.committed_step(facts)
    g = checkpoint.gate(writer.name, facts, step)
    if not g.ok:
        raise MirrorError(f"{writer.name}: nothing verified to mirror: {g.detail}")
    mirror, staging = local_paths(inv, profile)
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    argv = rsync_argv(inv, writer, layout.run_dir(writer, profile.run_name), staging, mirror)
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode:
        shutil.rmtree(staging, ignore_errors=True)
        raise MirrorError(f"{writer.name}: rsync exit {p.returncode}: {p.stderr.strip()[-300:]}")
    problem = verify_copy(facts, RunFacts.from_json(runs.lane_facts(str(staging.parent), staging.name)))
    if problem:
        shutil.rmtree(staging, ignore_errors=True)
        raise MirrorError(f"{writer.name}: the copy does not match the writer, the local mirror is "
                          f"left as it was: {problem}")
    swap(staging, mirror)
    return MirrorResult(writer.name, facts.run_dir, str(mirror), step, len(facts.files),
                        sum(f.size for f in facts.files.values()), literal_bytes(p.stdout),
                        time.monotonic() - t0, " ".join(argv))


def _refuse_while_writing(inv, profile, writer, facts):
    alive = facts.running
    state, pid = lock_state(inv, profile)
    if alive or state == "held":
        who = f"ranks {alive} on {writer.name}" if alive else f"the chunk runner (pid {pid})"
        raise MirrorError(f"a window is still writing ({who}); run mirror-back after it ends")


def rsync_argv(inv, host, remote_dir, staging, mirror):
    argv = ["rsync", "-rlt", "--stats", *EXCLUDES, "-e", ssh_command(inv, host),
            f"--rsync-path={host.rsync_path}"]
    if mirror.is_dir():
        argv.append(f"--link-dest={mirror}")
    return argv + [f"{host.destination}:{remote_dir}/", f"{staging}/"]


def literal_bytes(stats):
    m = re.search(r"Literal data: ([\d,]+)", stats)
    return int(m.group(1).replace(",", "")) if m else None


def verify_copy(remote, local):
    """The first difference between the writer's run directory and the staged copy, or None."""
    for name, want in sorted(remote.files.items()):
        have = local.files.get(name)
        if have is None:
            return f"{name} did not arrive"
        if have.sha256 != want.sha256:
            return f"{name} sha256 {have.sha256[:12]} differs from the writer's {want.sha256[:12]}"
    step = checkpoint.committed_step(local)
    g = checkpoint.gate("local", local, step if step is not None else -1)
    return None if g.ok else f"the copied checkpoint does not pass the gate: {g.detail}"


def swap(staging, mirror):
    """Put the verified staging folder in the mirror's place (the old one survives until then)."""
    old = mirror.with_name(f".{mirror.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if mirror.exists():
        os.replace(mirror, old)
    os.replace(staging, mirror)
    shutil.rmtree(old, ignore_errors=True)


def describe(result):
    return (f"{result.host}:{result.remote_dir} -> {result.local_dir}: step {result.step}, "
            f"{result.files} files, {human_bytes(result.run_bytes)}; file data sent "
            f"{human_bytes(result.literal_bytes)} in {result.seconds:.1f}s")

