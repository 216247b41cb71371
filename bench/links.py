"""Figures on real links: the namespaced lab (`fab lab-up --net netns`), each host behind a
control link to local and a data link to the other hosts, both veth pairs shaped with tc.

1b-link: `fab sync-cache --host mac4` of a cold mac4 against plain `rsync -a` of the same repo
         folder as a person runs it (the lane's endpoint, key and pinned host keys, OpenSSH's own
         ciphers: common.person_ssh_command), both over the shaped control link (order alternating).
1c-link: a no-op `fab sync-cache --host mac4` (nothing missing): its wall time.
9:       a cold mac4 filled from a complete mac5 over the data link (`--from mac5`, inventory
         ssh.peer_transport rsyncd; the same with peer_transport ssh in the details) against from
         local over the control link: ratio of the times, goal 0.5 x (data Mbit / control Mbit).
The rates each link carried (raw TCP, and ssh) and ssh's cipher alone are measured first and
carried in the figures' facts, from which their explanations are computed (bench/explain.py); a
figure's phase split is that of its median run (bench/syncphases.py).
Without root or network namespaces every figure is reported skipped, with the reason.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

import common as c
import linkprobe
from syncphases import median_run, phases_of
from thunderlane import sync


def parse():
    p = c.parser(__doc__)
    p.add_argument("--control-mbit", type=int, default=1000, help="control link rate (default 1000)")
    p.add_argument("--data-mbit", type=int, default=10000, help="data link rate (default 10000)")
    p.add_argument("--probe-mb", type=float, default=256, help="bytes per link-rate probe, MB (default 256)")
    return p.parse_args()


def unavailable():
    """Why the namespaced lab cannot be made here, or None."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux-only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode:
        return "`ip netns` is not available (iproute2 missing or no netns support)"
    if "--net" not in c.run([c.FAB, "lab-up", "--help"]).stdout:
        return "`fab lab-up` has no --net option (the namespaced lab is not in this tree)"
    return None


def peer_unavailable(lab):
    return None if "--from" in c.run([c.FAB, "sync-cache", "--help"], env=lab.env()).stdout else \
        "`fab sync-cache` has no --from option (peer sync is not in this tree)"


def fab_sync(lab, source, noop_launcher=None, inventory_path=None, split_launcher=False):
    """(seconds, phases, result row) of one `fab sync-cache --host mac4 --json` from ``source``
    ('local', a host, or None: a tree without peer sync, where local is the only source);
    ``split_launcher``: the launcher's time split by its own lines (syncphases.launcher_parts)."""
    extra = ["--from", source] if source else []
    seconds, code, lines, out = c.timed_lines([c.FAB, "sync-cache", "--host", "mac4", *extra, "--json"],
                                              lab.env(inventory_path))
    data = json.loads(out) if out.strip().startswith("{") else None
    if code or not data or not data["ok"] or data["results"][0]["after"] != "complete":
        raise RuntimeError(f"sync-cache {' '.join(extra)} failed ({code}): " + "\n".join(l for _, l in lines[-20:]))
    row = data["results"][0]
    if source and row.get("source", source) != source:
        raise RuntimeError(f"sync-cache --from {source} used {row.get('source')}")
    return seconds, phases_of(lines, seconds, row, noop_launcher, split_launcher), row


def sync_vs_rsync(lab, inv, runs, local):
    """1b-link and 1c-link."""
    host = inv.host("mac4")
    plain = ["rsync", "-a", "-e", c.person_ssh_command(inv, host), f"{lab.repo('local')}/",
             f"{host.destination}:{lab.repo('mac4')}/"]
    c.set_complete(lab, "mac4")
    noop_launcher = c.median([c.run(sync.launcher_argv(inv, host, str(lab.cache("local")), str(lab.cache("mac4"))),
                                    check=True).seconds for _ in range(runs)])
    t = {"fab": [], "plain": [], "noop": []}
    ph = {"fab": [], "noop": []}
    sent = []
    for i in range(runs):
        for kind in (("plain", "fab") if i % 2 == 0 else ("fab", "plain")):
            c.set_partial(lab, "mac4")
            if kind == "plain":
                t["plain"].append(c.run(plain, check=True).seconds)
            else:
                s, p, row = fab_sync(lab, local, noop_launcher=noop_launcher)
                sent.append(row["missing_bytes"])
                t["fab"].append(s)
                ph["fab"].append(p)
                s, p, row = fab_sync(lab, local)
                assert not row["literal_bytes"], row
                t["noop"].append(s)
                ph["noop"].append(p)
            c.log(f"run {i + 1} {kind}: {t[kind][-1]:.2f}s")
    m = {k: c.median(v) for k, v in t.items()}
    return [
        c.figure("1b-link", "sync over the shaped control link: wall time vs plain rsync -a", m["fab"] / m["plain"],
                 "<=", 1.05, runs=c.rounded([f / p for f, p in zip(t["fab"], t["plain"])]),
                 detail=f"median fab {m['fab']:.2f}s, plain rsync -a {m['plain']:.2f}s; the launcher alone with "
                        f"nothing to send {noop_launcher:.2f}s (fab's 'launcher fixed cost' phase; the rest of "
                        f"the launcher's time is its 'transfer')",
                 phases=median_run(t["fab"], ph["fab"]), baseline_phases={"transfer": m["plain"]}, work=["transfer"],
                 facts={"bytes": max(sent)}),
        c.figure("1c-link", "no-op sync (nothing missing) over the control link", m["noop"], "<=", 0.5,
                 goal="<= 0.5 s", runs=c.rounded(t["noop"]), unit="s",
                 detail=f"`fab sync-cache --host mac4` on a complete mac4, median of {runs}",
                 phases=median_run(t["noop"], ph["noop"])),
    ]


def with_transport(lab, transport):
    """A copy of the lab's inventory whose ``ssh.peer_transport`` is ``transport``."""
    data = yaml.safe_load(Path(lab.inventory).read_text())
    data.setdefault("ssh", {})["peer_transport"] = transport
    path = Path(lab.inventory).with_name(f"hosts-{transport}.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def peer(lab, inv, runs, args, facts):
    """9: cold mac4 from a complete mac5 over the data link (the inventory's ``ssh.peer_transport``
    rsyncd: a one-shot rsync daemon on the data link) vs from local over the control link; the same
    peer sync with ``peer_transport: ssh`` (rsync over the peer ssh) measured beside it."""
    goal, text = peer_goal(args)
    c.fab(lab, "setup-peers", check=True)   # the peer key, as an operator installs it once
    c.set_complete(lab, "mac5")
    paths = {"peer": with_transport(lab, "rsyncd"), "peer_ssh": with_transport(lab, "ssh"), "local": None}
    t = {k: [] for k in paths}
    ph = {k: [] for k in paths}
    sent = []
    for i in range(runs):
        kinds = list(paths) if i % 2 == 0 else list(reversed(list(paths)))
        for kind in kinds:
            c.set_partial(lab, "mac4")
            s, p, row = fab_sync(lab, "local" if kind == "local" else "mac5", inventory_path=paths[kind],
                                 split_launcher=True)
            sent.append(row["missing_bytes"])
            t[kind].append(s)
            ph[kind].append(p)
            c.log(f"run {i + 1} {kind}: {s:.2f}s")
    m = {k: c.median(v) for k, v in t.items()}
    fig = c.figure(
        "9", "peer sync over the data link vs from local over the control link", m["local"] / m["peer"], ">=", goal,
        goal=text,
        runs=c.rounded([lo / pe for lo, pe in zip(t["local"], t["peer"])]),
        detail=f"median from mac5 over the data link {m['peer']:.2f}s (ssh.peer_transport rsyncd; with "
               f"peer_transport ssh {m['peer_ssh']:.2f}s, ratio {m['local'] / m['peer_ssh']:.2f}), from local over "
               f"the control link {m['local']:.2f}s; links shaped at {args.data_mbit} and {args.control_mbit} Mbit",
        phases=median_run(t["peer"], ph["peer"]), baseline_phases=median_run(t["local"], ph["local"]),
        work=["launcher", "launcher passes"],   # the launcher's own setup and close are fixed cost
        facts={**facts, "fast_link": "data", "slow_link": "control", "fast_transport": "rsyncd", "bytes": max(sent)})
    # every run's split, not only the median run's: the peer runs have come out bimodal (1.7 s / 2.1 s)
    fig["details"] = {"runs_s": {k: c.rounded(v) for k, v in t.items()},
                      "phases_per_run": {k: ph[k] for k in ("peer", "local")}}
    return fig


def peer_goal(args):
    goal = 0.5 * args.data_mbit / args.control_mbit
    return goal, f">= {goal:g} (0.5 x {args.data_mbit}/{args.control_mbit} Mbit)"


def skipped(reason, args):
    goal, text = peer_goal(args)
    return [c.figure("1b-link", "sync over the shaped control link: wall time vs plain rsync -a", None, "<=", 1.05,
                     detail=f"skipped: {reason}"),
            c.figure("1c-link", "no-op sync (nothing missing) over the control link", None, "<=", 0.5,
                     goal="<= 0.5 s", unit="s", detail=f"skipped: {reason}"),
            c.figure("9", "peer sync over the data link vs from local over the control link", None, ">=", goal,
                     goal=text, detail=f"skipped: {reason}")]


def measure(lab, args):
    inv = lab.inv()
    if linkprobe.netns_of(lab, "mac4") is None:
        return skipped("lab-up kept the loopback lab (mac4's sshd is in the root namespace)", args)
    facts = linkprobe.measure(lab, inv, args.probe_mb, {"control": args.control_mbit, "data": args.data_mbit})
    why_not = peer_unavailable(lab)
    figures = sync_vs_rsync(lab, inv, args.runs, None if why_not else "local")
    for f in figures:  # both ran over the control link only
        f["facts"] = {**f.get("facts", {}), "links": {"control": facts["links"]["control"]},
                      "ssh_ceiling_mbit": facts["ssh_ceiling_mbit"]}
    return figures + [peer(lab, inv, args.runs, args, facts) if not why_not else skipped(why_not, args)[2]]


def main():
    args = parse()
    reason = unavailable()
    if reason:
        c.log(f"links: skipped: {reason}")
        return c.emit("links", vars(args), skipped(reason, args), [f"links: skipped: {reason}"])
    with c.lab_session("links", ["mac4", "mac5"], args.model_mb, net="netns",
                       control_mbit=args.control_mbit, data_mbit=args.data_mbit) as lab:
        figures = measure(lab, args)
    c.emit("links", vars(args), figures, [
        f"links: namespaced lab, control {args.control_mbit} Mbit, data {args.data_mbit} Mbit (tc tbf on both ends "
        f"of each veth); model {args.model_mb:g} MB; link rates measured with {args.probe_mb:g} MB per probe"])


if __name__ == "__main__":
    main()
