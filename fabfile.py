"""Thunder lane: the operator's tasks. Each is thin: parse flags, call ``thunderlane``, print a
table (or ``--json``), exit non-zero when any host fails. The inventory is ``hosts.yaml``, or the
file named by ``$THUNDER_INVENTORY`` (the lab's is ``.lab/hosts.yaml``).
"""
import atexit
import gc
import importlib
import json as jsonlib
import os
import sys
from pathlib import Path

from fabric import Connection, task
from invoke.exceptions import Exit

from thunderlane import inventory  # noqa: E402
from thunderlane.cache import FIGURES as CACHE_FIGURES
from thunderlane.dataset import FIGURES as DATASET_FIGURES
from thunderlane.remote import HostError
from thunderlane.report import human_bytes
from thunderlane.sync import SyncError
from thunderlane.verify import verify_cache as run_verify_cache, verify_dataset as run_verify_dataset

# Python's exit collects every object the imports made (0.05-0.15 s of a sub-second task); nothing the
# lane needs happens there (files close in with-blocks; no __del__ is promised at exit): freeze them out.
atexit.register(gc.freeze)


class _Lazy:
    """Module ``name``, imported at its first attribute use: a task loads only the modules it runs
    (``fab sync-cache`` never loads the training, mirror or lab code; fab starts faster). A plain
    object, so Invoke's scan of this module for tasks (an isinstance of every value) imports nothing."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)


handoff_mod, lab, mirror = _Lazy("thunderlane.handoff"), _Lazy("thunderlane.lab"), _Lazy("thunderlane.mirror")
profiles, setup_mod = _Lazy("thunderlane.profiles"), _Lazy("thunderlane.setup_hosts")
status_mod, window = _Lazy("thunderlane.status"), _Lazy("thunderlane.window")
peer_setup, peer_sync = _Lazy("thunderlane.peer_setup"), _Lazy("thunderlane.peer_sync")
LAB_DEFAULT_LAYOUT = "local=shared"  # lab.DEFAULT_LAYOUT, written here so that --help does not load the lab

# help strings shared by several tasks
HOSTS_HELP = "comma-separated host names (default: every host in the inventory)"
JSON_HELP = "print JSON instead of a table"
PROFILE_HELP = "profile name in launchers/profiles/ (default: partial_real_stage1_stable)"
TARGET_HELP = "absolute step to reach (default 10)"
WINDOW_HELP = "at most this many steps per window (default 10)"
WATCHDOG_HELP = "end a window after this many seconds without progress (default: the profile's)"


def _no_fabric_hosts(c):
    """Fabric's -H runs a task once per host with a Connection; the lane's tasks choose hosts from
    the inventory themselves, so -H would repeat the whole task per host: refuse it."""
    if isinstance(c, Connection):
        raise Exit(f"fab -H {c.host} is not how hosts are chosen here: use --hosts mac4,mac5 (verify-*) or "
                   "--host mac4 (sync-cache); training hosts come from the profile", code=2)


def _inventory():
    try:
        return inventory.load()
    except inventory.InventoryError as e:
        raise Exit(f"inventory: {e}", code=2) from None


def _hosts(inv, hosts):
    try:
        return inv.select(hosts)
    except inventory.InventoryError as e:
        raise Exit(str(e), code=2) from None


def _profile(name):
    try:
        return profiles.load(name)
    except profiles.ProfileError as e:
        raise Exit(f"profile: {e}", code=2) from None


def _finish(report, columns, as_json):
    print(report.to_json() if as_json else report.to_table(columns))
    if not report.ok:
        raise Exit(code=1)


@task(auto_shortflags=False, help={"hosts": HOSTS_HELP, "json": JSON_HELP})
def setup_hosts(c, hosts="", json=False):
    """Build each host's lane venv from its base_python with launchers/host-requirements.txt."""
    _no_fabric_hosts(c)
    inv = _inventory()
    _finish(setup_mod.setup_hosts(inv, _hosts(inv, hosts), out=sys.stderr), setup_mod.columns(), json)


@task(auto_shortflags=False, help={"json": JSON_HELP})
def setup_peers(c, json=False):
    """Install the peer key on every host, so that hosts fill each other's cache over the data link."""
    _no_fabric_hosts(c)
    _finish(peer_setup.setup_peers(_inventory()), peer_setup.FIGURES, json)


@task(auto_shortflags=False, help={"hosts": HOSTS_HELP, "json": JSON_HELP})
def verify_dataset(c, hosts="", json=False):
    """Prove the corpus is present, valid and identical on local and every host."""
    _no_fabric_hosts(c)
    inv = _inventory()
    _finish(run_verify_dataset(inv, _hosts(inv, hosts)), DATASET_FIGURES, json)


@task(auto_shortflags=False, help={"hosts": HOSTS_HELP, "json": JSON_HELP,
                                   "deep": "re-hash every blob against its name (reads every byte)"})
def verify_cache(c, hosts="", deep=False, json=False):
    """Prove the model's HF cache is complete on every host, in parity with local's."""
    _no_fabric_hosts(c)
    inv = _inventory()
    report, _ = run_verify_cache(inv, _hosts(inv, hosts), deep=deep)
    _finish(report, CACHE_FIGURES, json)


@task(auto_shortflags=False,
      help={"host": "inventory name(s) of the host(s) to fill, comma-separated (default: every host)",
            "from": "the source: a host with a complete cache (pulled over the data link with the peer key) "
                    "or local; default: a complete peer when one can serve, else local",
            "dry_run": "print the plan (what would be sent and removed); change nothing",
            "checksum": "compare contents, not size and mtime: repairs blobs verify-cache --deep calls corrupt",
            "bwlimit": "limit the transfer to this many KiB/s",
            "verbose": "show rsync's own output (file list, statistics) as well",
            "json": "print JSON instead of a summary"})
def sync_cache(c, host="", from_="", dry_run=False, checksum=False, bwlimit=0, verbose=False, json=False):
    """Make hosts' model caches complete, each from the nearest complete source; then verify them."""
    _no_fabric_hosts(c)
    inv = _inventory()
    targets = _hosts(inv, host)
    if from_ and from_ != "local":
        if len(_hosts(inv, from_)) != 1:  # an unknown name: exit 2, naming the inventory's hosts
            raise Exit(f"sync-cache: --from {from_!r}: name one source (a host, or local)", code=2)
        if not host:  # every host but the source
            targets = [h for h in targets if h.name != from_]
    try:
        filled = peer_sync.fill(inv, targets, from_ or None, dry_run=dry_run, checksum=checksum,
                                bwlimit=bwlimit or None, verbose=verbose, out=sys.stderr if json else sys.stdout)
    except (SyncError, HostError) as e:
        raise Exit(f"sync-cache: {e}", code=1) from None
    ok = all(f.ok or (dry_run and f.error is None) for f in filled)
    rows = [_filled_row(f) for f in filled]
    if json:
        print(jsonlib.dumps({"ok": ok, "results": [r for r in rows if "error" not in r],
                             "errors": [r["error"] for r in rows if "error" in r]}, indent=2))
    else:
        for r in rows:
            if "error" in r:
                print(f"FAILED {r['error']}", file=sys.stderr)
            else:
                print(_sync_line(r))
    if not ok:
        raise Exit(code=1)


def _filled_row(f):
    """A target's row: its source (and any failed peer before it), then the transfer's figures."""
    source = {"host": f.step.target, "source": f.step.source, "why": f.step.why, "fallback_from": f.step.fallback,
              "fallback_error": f.fallback_error}
    if f.outcome is None:
        return {**source, "error": f.error if f.step.source == "local" else f"{f.error} (pulling from {f.step.source})"}
    return {**source, **_sync_row(f.outcome)}


def _sync_row(o):
    return {"host": o.host, "before": o.before.verdict,
            "after": o.after.verdict if o.after else "dry-run",
            "detail": "" if o.after is None or o.after.ok else o.after.detail,
            "missing_bytes": o.missing_bytes, "literal_bytes": o.literal_bytes,
            "total_sent": o.total_sent, "literal_from": o.literal_from, "literal_derivation": o.derivation,
            "ratio": None if o.ratio is None else round(o.ratio, 4),
            "seconds": round(o.seconds, 2), "command": o.command,
            "phases": {k: round(v, 3) for k, v in o.phases.items()}}


def _sync_line(r):
    """One summary line per host: a peer source, before -> after, bytes sent against missing, time."""
    estimate = r["literal_derivation"]
    who = r["host"] if r["source"] == "local" else f"{r['host']} <- {r['source']}"
    if not r["command"]:
        return f"{who}: {r['before']}, nothing missing: nothing sent; {r['seconds']}s"
    return (f"{who}: {r['before']} -> {r['after']}; file data sent {human_bytes(r['literal_bytes'])}{estimate} "
            f"of {human_bytes(r['missing_bytes'])} missing (ratio {r['ratio']}); {r['seconds']}s"
            + (f"; {r['detail']}" if r["detail"] else "")
            + (f"; {r['fallback_from']} failed first: {r['fallback_error']}" if r.get("fallback_from") else ""))


@task(auto_shortflags=False, help={"hosts": "comma-separated lab host names (default: mac4,mac5)",
                                   "model_mb": "approximate weight bytes of the generated model, in MB",
                                   "reseed": "put the fixtures back to the handoff's situation",
                                   "layout": "the caches' layout: classic, shared, or per host "
                                             "(local=shared,mac4=classic); default: as the lab was, "
                                             "else " + LAB_DEFAULT_LAYOUT,
                                   "addresses": "single (every host on 127.0.0.1, own ports; macOS's "
                                                "default) or per-host (127.77.0.10, .11, ...; Linux's); "
                                                "default: as the lab was",
                                   "key_in_agent": "give the control key a passphrase and hold it in an ssh-agent "
                                                   "the lab starts (source .lab/agent.env); without it: no "
                                                   "passphrase, no agent",
                                   "net": "loopback (every host's sshd on loopback; the default) or netns (root, "
                                          "Linux: a network namespace per host, with a shaped control link and a "
                                          "data link on a shared bridge); default: as the lab was",
                                   "control_mbit": "netns: the control links' rate in Mbit/s (default: as the "
                                                   "lab was, else 1000)",
                                   "data_mbit": "netns: the data links' rate in Mbit/s (default: as the lab "
                                                "was, else 10000)"})
def lab_up(c, hosts="mac4,mac5", model_mb=2.0, reseed=False, layout="", addresses="", key_in_agent=False,
           net="", control_mbit=0, data_mbit=0):
    """Start the lab: one real sshd per host (on loopback, or in its own network namespace with real
    links), caches made by huggingface_hub's own client (mac4 from a real interrupted download)."""
    names = [n.strip() for n in hosts.split(",") if n.strip()]
    if net and net not in lab.net.NETS:
        raise Exit(f"lab-up: --net {net!r}: choose one of {', '.join(lab.net.NETS)}", code=2)
    if control_mbit < 0 or data_mbit < 0:
        raise Exit("lab-up: --control-mbit and --data-mbit must be positive", code=2)
    try:
        lab.parse_layout(layout, names, lab.DEFAULT_LAYOUT)
    except ValueError as e:
        raise Exit(f"lab-up: {e}", code=2) from None
    if addresses and addresses not in lab.net.MODES:
        raise Exit(f"lab-up: --addresses {addresses!r}: choose one of {', '.join(lab.net.MODES)}", code=2)
    try:
        path = lab.up(names, model_mb=model_mb, reseed=reseed, layout=layout or None,
                      addresses=addresses or None, key_in_agent=key_in_agent, net=net or None,
                      control_mbit=control_mbit or None, data_mbit=data_mbit or None, say=print)
    except (lab.LabError, ValueError) as e:
        raise Exit(f"lab-up: {e}", code=1) from None
    for name, pid in lab.status().items():
        print(f"{name}: {'sshd pid ' + str(pid) if pid else 'stopped'}")
    layouts = (lab.seeded(lab.LAB) or {}).get("layouts", {})
    print("caches:    " + ", ".join(f"{h}={v}" for h, v in layouts.items()))
    print(_net_lines(path.parent) or f"addresses: {lab.net.remembered(lab.LAB)}")
    print(f"inventory: {path}\nuse it:    export THUNDER_INVENTORY={path}")
    if key_in_agent:
        print(f"key:       passphrase-protected, held by the lab's ssh-agent; use it: . {lab.LAB / 'agent.env'}")


def _net_lines(lab_dir):
    """The namespaced lab's links and addresses, as lab-up prints them; '' for a loopback lab."""
    rec = lab.netns.recorded(lab_dir) if lab.net.remembered_net(lab_dir) == lab.net.NETNS else None
    if not rec:
        return ""
    lines = [f"net:       netns {rec['lab_id']}: control {rec['control_mbit']} Mbit/s, data {rec['data_mbit']} "
             f"Mbit/s; delay: {rec.get('delay')}"]
    lines += [f"{name}: control {h['control_ip']} (local end {h['local_ip']}), data {h['data_ip']}, "
              f"namespace {h['ns']}" for name, h in rec["hosts"].items()]
    return "\n".join(lines)


@task
def lab_down(c):
    """Stop exactly the lab's sshd processes (and the ssh-agent of --key-in-agent); remove its namespaces."""
    stopped = lab.down()
    for name, what in stopped:
        if name == "netns":
            print(f"netns: removed {what}")
        else:
            print(f"{name}: stopped {'' if name == 'ssh-agent' else 'sshd '}pid {what}")
    if not stopped:
        print("lab: nothing running")


def _lab_of_inventory():
    """The namespaced lab whose inventory $THUNDER_INVENTORY names (the record beside it), else .lab/."""
    path = os.environ.get("THUNDER_INVENTORY")
    folder = Path(path).parent if path else None
    return folder if folder and (folder / lab.netns.RECORD).is_file() else lab.LAB


@task(auto_shortflags=False, positional=["host", "which", "state"],
      help={"host": "the lab host whose cable it is (mac4, mac5, ...)",
                                   "which": "control (the link to this machine) or data (the hosts' bridge)",
                                   "state": "down (pull the cable: packets vanish, no reset) or up (plug it)"})
def lab_link(c, host=None, which=None, state=None):
    """Pull or plug a namespaced lab host's cable: fab lab-link mac5 data down|up.

    The three are positional, so `fab lab-link --help` would be read as a host: use
    `fab --help lab-link`. The lab is the one whose inventory $THUNDER_INVENTORY names, else .lab/."""
    if not host or which not in ("control", "data") or state not in ("down", "up"):
        raise Exit("usage: fab lab-link HOST control|data down|up", code=2)
    try:
        command = lab.netns.link(_lab_of_inventory(), host, which, state)
    except lab.LabError as e:
        raise Exit(str(e), code=1) from None
    print(f"{host}: {which} cable {'pulled' if state == 'down' else 'plugged'} ({command})")


@task(auto_shortflags=False,
      help={"profile": PROFILE_HELP, "target": TARGET_HELP, "window": WINDOW_HELP, "watchdog": WATCHDOG_HELP,
            "skip_preflight": "launch without the preflight checks (for diagnosis only)",
            "json": "print JSON instead of a summary"})
def train_window(c, profile="partial_real_stage1_stable", target=10, window_=10, watchdog=0,
                 skip_preflight=False, json=False):
    """Train a profile to an absolute step in bounded windows across its hosts; gate on checkpoint.json."""
    _no_fabric_hosts(c)
    inv, prof = _inventory(), _profile(profile)
    if target < 1 or window_ < 1:
        raise Exit("train-window: --target and --window must be positive", code=2)
    try:
        result = window.train_window(inv, prof, target, window_, watchdog=watchdog or None,
                                     skip_preflight=skip_preflight, out=sys.stderr if json else sys.stdout)
    except window.WindowError as e:
        raise Exit(f"train-window: {e}", code=1) from None
    except KeyboardInterrupt:
        window.reap_all(inv, prof)
        raise Exit("train-window: interrupted; every rank was ended", code=130) from None
    summary = window.train_summary(result)  # not handoff's module: its imports cost 0.1-0.4 s
    print(jsonlib.dumps(summary, indent=2, default=str) if json else _window_text(result, summary))
    if not result.ok:
        raise Exit(code=1)


def _window_text(result, summary):
    lines = [] if result.preflight.ok else [result.preflight.to_table(["python", "mlx", "mlx_lm", "free", "step"])]
    lines += [f"preflight: {r.host}: {r.figures['macos']}" for r in result.preflight.results if "macos" in r.figures]
    if summary["command"]:
        lines.append(f"command: {summary['command']}")
        lines += [f"mlx.launch: {launch}" for launch in summary["launches"]]
    if result.gate:
        lines.append(f"gate: {result.gate.host} {result.gate.verdict}: {result.gate.detail}")
    lines.append(f"train-window: {result.verdict}: {result.explanation}")
    return "\n".join(lines)


@task(auto_shortflags=False, help={"profile": PROFILE_HELP, "json": JSON_HELP,
                                   "force": "replace a mirror of another run or of a later step; the old one "
                                            "is kept beside it as <name>.replaced-<UTC time>"})
def mirror_back(c, profile="partial_real_stage1_stable", force=False, json=False):
    """Bring the writer's committed step home, verified, replacing the local mirror only then."""
    _no_fabric_hosts(c)
    inv, prof = _inventory(), _profile(profile)
    try:
        result = mirror.mirror_back(inv, prof, force=force)
    except mirror.MirrorBusy as e:
        raise Exit(f"mirror-back: {e}", code=75) from None
    except (mirror.MirrorError, window.WindowError) as e:
        raise Exit(f"mirror-back: {e}", code=1) from None
    print(jsonlib.dumps(vars(result), indent=2) if json else f"mirror-back: {mirror.describe(result)}")


@task(auto_shortflags=False,
      help={"profile": PROFILE_HELP, "target": TARGET_HELP, "window": WINDOW_HELP, "watchdog": WATCHDOG_HELP,
            "json": "print the report as JSON", "force": "mirror-back --force: replace a mirror of another run "
                                                          "or of a later step, keeping it as a dated copy"})
def handoff(c, profile="partial_real_stage1_stable", target=10, window_=10, watchdog=0, force=False, json=False):
    """The whole bounded job: verify, sync cold hosts, train, mirror back, report."""
    _no_fabric_hosts(c)
    inv, prof = _inventory(), _profile(profile)
    if target < 1 or window_ < 1:
        raise Exit("handoff: --target and --window must be positive", code=2)
    data = handoff_mod.run(inv, prof, target, window_, watchdog=watchdog or None,
                           out=sys.stderr if json else sys.stdout, force=force)
    print(jsonlib.dumps(data, indent=2, default=str) if json else "\n" + handoff_mod.render_markdown(data))
    print(f"report: {data.get('report_local')} (and {data.get('report_remote') or 'not on the writer'})",
          file=sys.stderr if json else sys.stdout)
    if not data["ok"]:
        raise Exit(code=1)


@task(auto_shortflags=False,
      help={"profile": PROFILE_HELP, "json": "print the results as JSON (progress stays on stderr)",
            "step": "the committed step to evaluate (default: the mirror's, or the host's with --on)",
            "limit": "evaluate the split's first N rows only (default: all)",
            "split": "test or valid (default: test)",
            "batch": "rows decoded together by mlx-lm's batch generator (default 8; 1: row by row)",
            "on": "evaluate on this host: its committed step, cache and dataset (default: the local mirror)"})
def evaluate(c, profile="partial_real_stage1_stable", step=-1, limit=0, split="test", batch=8, json=False, on=""):
    """CER of the ASR hypotheses and of the adapter's corrections on a split; the promotion verdict."""
    from thunderlane.evaluate import run as evaluate_mod, section
    from thunderlane.evaluate.on_host import evaluate_on
    from thunderlane.evaluate.rows import SplitError
    _no_fabric_hosts(c)
    inv, prof = _inventory(), _profile(profile)
    if limit < 0 or batch < 1 or (step != -1 and step < 1):
        raise Exit("evaluate: --limit >= 0, --batch >= 1, --step >= 1", code=2)
    args = dict(step=None if step == -1 else step, split=split, limit=limit, batch=batch, out=sys.stderr)
    try:
        data = evaluate_on(inv, prof, on, **args) if on else evaluate_mod.evaluate(inv, prof, **args)
    except (evaluate_mod.EvaluateError, SplitError) as e:
        raise Exit(f"evaluate: {e}", code=1) from None
    print(jsonlib.dumps(data, indent=2, ensure_ascii=False) if json else section.text(data))
    if data.get("warning"):  # --on: the host could not save the result (kept locally if it could be)
        raise Exit(f"evaluate: warning: {data['warning']}", code=1)


@task(auto_shortflags=False, help={"profile": PROFILE_HELP, "json": JSON_HELP})
def status(c, profile="partial_real_stage1_stable", json=False):
    """One table: reachable, dataset, cache, versions, last committed step, window running."""
    _no_fabric_hosts(c)
    inv, prof = _inventory(), _profile(profile)
    _finish(status_mod.status(inv, prof), status_mod.FIGURES, json)
