"""Figure 1: `fab sync-cache` of a partial host (about a tenth present).

Bytes rsync reports as sent / bytes missing; wall time of `fab sync-cache --host mac4` against
plain `rsync -a` of the same repo folder as a person runs it (the lane's endpoint, key and pinned
host keys, OpenSSH's own ciphers: common.person_ssh_command), each run from the same partial cache,
the order alternating; and a second sync, which should send no file bytes. 1b-fixed, fab's fixed
cost, is fab against plain `rsync -a` over the lane's own ssh command (its ciphers too): recorded,
no goal (1b-link holds fixed cost to its goal on a real link).
The "(shared)" rows repeat 1a and 1c with local's cache in huggingface_hub 2.x's shared layout
(its weight blobs links into the hub root's store; ``layouts.py``).
"""
import re
import shlex
import shutil

import common as c
import layouts
from thunderlane import lab as labmod, remote, sync


def total_sent(stats):
    m = re.search(r"Total bytes sent: ([\d,]+)", stats)
    return int(m.group(1).replace(",", "")) if m else None


GIB_AT_1000MBIT = 2**30 * 8 / 1e9            # seconds a GiB takes at 1000 Mbit/s
FIXED_SHARE = round(0.05 * GIB_AT_1000MBIT, 2)  # what 1.05x over that link leaves for everything else


def phase_medians(rows):
    """{phase: median seconds} over fab's runs; ``start`` is fab's start and exit (wall - its own
    'seconds'): the interpreter, the imports, the inventory."""
    keys = sorted({k for r in rows for k in r})
    out = {k: c.median([r.get(k, 0.0) for r in rows]) for k in keys}
    out["start"] = c.median([r["wall"] - r["internal"] for r in rows])
    return out


def describe(split):
    order = ["wall", "start", "verify_before", "ssh_master_wait", "launcher", "verify_after", "standby_unused"]
    return ", ".join(f"{k} {split[k]:.3f}" for k in order if k in split)


def shared_runs(lab, runs):
    """(bytes sent / missing per run, second sync's file bytes per run, the command): mac4 partial
    (classic, as the handoff finds it), local in the shared layout, under an inventory of their own."""
    root = lab.dir / "shared"
    source = layouts.classic_copy(lab.repo("local"), root / "classic" / c.REPO)
    local = layouts.shared_cache(source, root, "local")
    dest = root / "mac4-partial" / "hub"

    def change(data):
        data["local"]["hf_cache"] = str(local)
        data["hosts"]["mac4"]["hf_cache"] = str(dest)
    path = c.write_inventory(lab, "hosts-shared-sync.yaml", change)
    ratios, second = [], []
    for i in range(runs):
        shutil.rmtree(dest, ignore_errors=True)
        labmod.seed_partial(source, dest)
        row = c.fab(lab, "sync-cache", "--host", "mac4", inventory_path=path, check=True).data["results"][0]
        assert row["after"] == "complete", row
        ratios.append(row["total_sent"] / row["missing_bytes"])
        again = c.fab(lab, "sync-cache", "--host", "mac4", inventory_path=path, check=True)
        second.append(again.data["results"][0]["literal_bytes"])
        c.log(f"shared run {i + 1}: sent/missing {ratios[-1]:.5f}, second sync {second[-1]} bytes")
    return ratios, second, c.fab_command(lab, "sync-cache", "--host", "mac4", inventory_path=path)


def main():
    args = c.parser(__doc__).parse_args()
    with c.lab_session("bytes", c.BYTE_HOSTS, args.model_mb) as lab:
        inv = lab.inv()
        host = inv.host("mac4")
        dest = lab.repo("mac4")
        plain = ["rsync", "-a", "--stats", "-e", c.person_ssh_command(inv, host),
                 f"{lab.repo('local')}/", f"{host.destination}:{dest}/"]
        lane = ["rsync", "-a", "-e", remote.ssh_command(inv, host), f"{lab.repo('local')}/", f"{host.destination}:{dest}/"]
        launcher = sync.launcher_argv(inv, host, str(lab.cache("local")), str(lab.cache("mac4")))
        times = {"fab": [], "plain": [], "lane": [], "launcher": [], "fab_internal": [], "second": [], "launcher_noop": []}
        phases, noop = [], []   # fab's own phase split of each sync: its row's "phases" and wall time
        sent, literal, second_literal, plain_sent = [], [], [], []
        for i in range(args.runs):
            order = ["plain", "fab", "lane", "launcher"] if i % 2 == 0 else ["launcher", "lane", "fab", "plain"]
            for kind in order:
                c.set_partial(lab, "mac4")
                if kind == "fab":
                    r = c.fab(lab, "sync-cache", "--host", "mac4", check=True)
                    row = r.data["results"][0]
                    assert row["after"] == "complete", row
                    sent.append(row["total_sent"] / row["missing_bytes"])
                    literal.append(row["literal_bytes"] / row["missing_bytes"])
                    times["fab_internal"].append(row["seconds"])
                    phases.append(dict(row["phases"], wall=r.seconds, internal=row["seconds"]))
                    again = c.fab(lab, "sync-cache", "--host", "mac4", check=True)
                    second = again.data["results"][0]
                    assert second["after"] == "complete" and not second["command"], second  # nothing missing
                    second_literal.append(second["literal_bytes"])
                    times["second"].append(again.seconds)
                    noop.append(dict(second["phases"], wall=again.seconds, internal=second["seconds"]))
                    times["launcher_noop"].append(c.run(launcher, check=True).seconds)
                else:
                    r = c.run({"plain": plain, "lane": lane, "launcher": launcher}[kind], check=True)
                    if kind == "plain":
                        plain_sent.append(total_sent(r.stdout))
                times[kind].append(r.seconds)
                c.log(f"run {i + 1} {kind}: {r.seconds:.2f}s")
        helps = [c.run([c.FAB, "--help"], env=lab.env(), check=True).seconds for _ in range(5)]
        ssh = [c.run([*shlex.split(remote.ssh_command(inv, host)), host.destination, "true"], check=True).seconds
               for _ in range(5)]
        verify = [c.fab(lab, "verify-cache", "--hosts", "mac4", check=True).seconds for _ in range(5)]
        shared, shared_second, shared_cmd = shared_runs(lab, args.runs)
        c.set_complete(lab, "mac4")
    med = {k: c.median(v) for k, v in times.items()}
    split, noop_split = phase_medians(phases), phase_medians(noop)
    fixed = [f - p for f, p in zip(times["fab"], times["lane"])]
    figures = [
        c.figure("1a", "sync: bytes sent / bytes missing", c.median(sent), "<=", 1.02, runs=c.rounded(sent, 5),
                 detail=f"rsync 'Total bytes sent' over verify's missing bytes; file data (Literal data) "
                        f"/ missing = {c.median(literal):.5f}"),
        c.figure("1b", "sync: wall time vs plain rsync -a", med["fab"] / med["plain"], "<=", 1.10,
                 runs=c.rounded([f / p for f, p in zip(times["fab"], times["plain"])]),
                 detail=f"median fab {med['fab']:.2f}s, plain rsync -a {med['plain']:.2f}s (OpenSSH's own cipher; over "
                        f"the lane's ssh command, AES-GCM first, {med['lane']:.2f}s), the launcher alone "
                        f"{med['launcher']:.2f}s ({med['launcher'] / med['plain']:.2f}x); inside fab (its own "
                        f"'seconds': verify, launcher, verify) {med['fab_internal']:.2f}s. Fixed cost: a second sync with nothing "
                        f"to send takes {med['second']:.2f}s (fab start and a verify of local and mac4, as `fab verify-cache "
                        f"--hosts mac4` alone takes {c.median(verify):.2f}s; no launcher, no second verify: 1d; one plain "
                        f"ssh session takes {c.median(ssh):.2f}s), "
                        f"against fab - plain = {med['fab'] - med['plain']:.2f}s; the launcher alone with nothing to "
                        f"send {med['launcher_noop']:.2f}s, against launcher - plain = "
                        f"{med['launcher'] - med['plain']:.2f}s"),
        dict(c.figure("1b-fixed", "sync: fixed cost, fab - plain rsync -a over the lane's ssh", c.median(fixed), "<=",
                      FIXED_SHARE, unit="s", runs=c.rounded(fixed),
                      goal="none: recorded (1b-link holds it on a real link)",
                      detail=f"for scale: the share of 1.05x of a 1 GiB transfer at 1000 Mbit/s "
                             f"({GIB_AT_1000MBIT:.1f} s) that is not the transfer is {FIXED_SHARE:.2f} s. fab's phases "
                             f"(median s): {describe(split)}; the launcher - plain rsync over the lane's ssh "
                             f"{med['launcher'] - med['lane']:.2f}s, alone with nothing to send {med['launcher_noop']:.2f}s"),
             phases=split, launcher_minus_plain=med["launcher"] - med["lane"], launcher_noop=med["launcher_noop"],
             ok=None, recorded=True),
        dict(c.figure("1d", "sync: no-op `fab sync-cache` (nothing missing)", med["second"], "<=", 0.5, unit="s",
                      runs=c.rounded(times["second"]),
                      detail=f"mac4 complete: the verify before proves it, no launcher runs, no second verify. "
                             f"Phases (median s): {describe(noop_split)}; `fab --help` alone {c.median(helps):.2f}s"),
             phases=noop_split, fab_help=c.median(helps)),
        c.figure("1c", "sync: second sync file bytes sent", max(second_literal), "==", 0, goal="0 bytes",
                 runs=second_literal, unit="bytes",
                 detail=f"second `fab sync-cache` took {med['second']:.2f}s (median)"),
        c.figure("1a-shared", "sync (shared local): bytes sent / bytes missing", c.median(shared), "<=", 1.02,
                 runs=c.rounded(shared, 5), detail="local's weight blobs in huggingface_hub's shared store; "
                                                   "mac4 partial, classic; rsync 'Total bytes sent' over missing"),
        c.figure("1c-shared", "sync (shared local): second sync file bytes sent", max(shared_second), "==", 0,
                 goal="0 bytes", runs=shared_second, unit="bytes"),
    ]
    c.emit("sync", vars(args), figures, [
        f"1a-shared, 1c-shared: `{shared_cmd}`",
        f"1: model {args.model_mb:g} MB; missing {row['missing_bytes']} bytes on mac4; plain rsync sent "
        f"{c.median(plain_sent)} bytes; commands: `{c.fab_command(lab, 'sync-cache', '--host', 'mac4')}` "
        f"vs `rsync -a --stats -e '{c.person_ssh_command(inv, host)}' {lab.repo('local')}/ {host.destination}:{dest}/`"
        f" (the lane's ssh command without its Ciphers: OpenSSH's own choice, as a person's ssh makes it)",
    ])


if __name__ == "__main__":
    main()
