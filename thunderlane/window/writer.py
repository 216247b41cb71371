"""The profile's hosts and its writer (rank 0, the host whose run directory is the record)."""
from .. import checkpoint, facts, layout, requirements
from ..inventory import InventoryError
from ..remote import HostError, ask, ask_each


class WindowError(RuntimeError):
    """A window cannot be planned or judged: a host is unknown or unreachable, a checkpoint unreadable."""


def profile_hosts(inv, profile):
    """The profile's hosts from the inventory, rank 0 (the writer) first."""
    try:
        return [inv.host(name) for name in profile.hosts]
    except InventoryError as e:
        raise WindowError(f"profile {profile.name}: {e}") from None


def run_query(host, profile):
    return facts.run(host.runs_root, profile.run_name, requirements.names(requirements.shipped()))


def run_facts(inv, hosts, profile):
    """Every host's run directory: {name: RunFacts or HostError}."""
    return ask_each(inv, hosts, lambda h: run_query(h, profile))


def writer_facts(inv, profile):
    """(writer host, its RunFacts); an unreachable writer is a :class:`WindowError`."""
    writer = profile_hosts(inv, profile)[0]
    try:
        return writer, ask(inv, writer, run_query(writer, profile))[0]
    except HostError as e:
        raise WindowError(f"writer {e.host} {e.kind}: {e.message}") from None  # unreachable, timeout, key...


def committed(inv, profile):
    """The step the writer's checkpoint.json commits (0 if none). Unreadable is an error."""
    writer, got = writer_facts(inv, profile)
    step = checkpoint.committed_step(got)
    if step is None:
        raise WindowError(f"{writer.name}: {got.run_dir}/checkpoint.json is unreadable: {got.checkpoint.error}")
    return step


def writer_run_dir(inv, profile):
    """(writer host, the run's directory on it)."""
    writer = profile_hosts(inv, profile)[0]
    return writer, layout.run_dir(writer, profile.run_name)
