"""Figure 1: `fab sync-cache` of a partial host (about a tenth present).

Bytes rsync reports as sent / bytes missing; wall time of `fab sync-cache --host mac4` against
plain `rsync -a` of the same repo folder over the same ssh settings (each run starts from the same
partial cache; the order alternates); and a second sync, which should send no file bytes.
"""
import re
import shlex

import common as c
from thunderlane import remote, sync


def total_sent(stats):
    m = re.search(r"Total bytes sent: ([\d,]+)", stats)
    return int(m.group(1).replace(",", "")) if m else None


def main():
    args = c.parser(__doc__).parse_args()
    with c.lab_session("bytes", c.BYTE_HOSTS, args.model_mb) as lab:
        inv = lab.inv()
        host = inv.host("mac4")
        dest = lab.repo("mac4")
        plain = ["rsync", "-a", "--stats", "-e", remote.ssh_command(inv, host),
                 f"{lab.repo('local')}/", f"{host.destination}:{dest}/"]
        launcher = sync.launcher_argv(inv, host, str(lab.cache("local")), str(lab.cache("mac4")))
        times = {"fab": [], "plain": [], "launcher": [], "fab_internal": [], "second": [], "launcher_noop": []}
        sent, literal, second_literal, plain_sent = [], [], [], []
        for i in range(args.runs):
            order = ["plain", "fab", "launcher"] if i % 2 == 0 else ["launcher", "fab", "plain"]
            for kind in order:
                c.set_partial(lab, "mac4")
                if kind == "fab":
                    r = c.fab(lab, "sync-cache", "--host", "mac4", check=True)
                    row = r.data["results"][0]
                    assert row["after"] == "complete", row
                    sent.append(row["total_sent"] / row["missing_bytes"])
                    literal.append(row["literal_bytes"] / row["missing_bytes"])
                    times["fab_internal"].append(row["seconds"])
                    again = c.fab(lab, "sync-cache", "--host", "mac4", check=True)
                    second_literal.append(again.data["results"][0]["literal_bytes"])
                    times["second"].append(again.seconds)
                    times["launcher_noop"].append(c.run(launcher, check=True).seconds)
                else:
                    r = c.run(plain if kind == "plain" else launcher, check=True)
                    if kind == "plain":
                        plain_sent.append(total_sent(r.stdout))
                times[kind].append(r.seconds)
                c.log(f"run {i + 1} {kind}: {r.seconds:.2f}s")
        ssh = [c.run([*shlex.split(remote.ssh_command(inv, host)), host.destination, "true"], check=True).seconds
               for _ in range(5)]
        verify = [c.fab(lab, "verify-cache", "--hosts", "mac4", check=True).seconds for _ in range(5)]
        c.set_complete(lab, "mac4")
    med = {k: c.median(v) for k, v in times.items()}
    figures = [
        c.figure("1a", "sync: bytes sent / bytes missing", c.median(sent), "<=", 1.02, runs=c.rounded(sent, 5),
                 detail=f"rsync 'Total bytes sent' over verify's missing bytes; file data (Literal data) "
                        f"/ missing = {c.median(literal):.5f}"),
        c.figure("1b", "sync: wall time vs plain rsync -a", med["fab"] / med["plain"], "<=", 1.10,
                 runs=c.rounded([f / p for f, p in zip(times["fab"], times["plain"])]),
                 detail=f"median fab {med['fab']:.2f}s, plain rsync -a {med['plain']:.2f}s, the launcher alone "
                        f"{med['launcher']:.2f}s ({med['launcher'] / med['plain']:.2f}x); inside fab (its own "
                        f"'seconds': verify, launcher, verify) {med['fab_internal']:.2f}s. Fixed cost: a second sync with nothing "
                        f"to send takes {med['second']:.2f}s (fab start and a verify of local and mac4, as `fab verify-cache "
                        f"--hosts mac4` alone takes {c.median(verify):.2f}s; the launcher; a second verify; one plain "
                        f"ssh session takes {c.median(ssh):.2f}s), "
                        f"against fab - plain = {med['fab'] - med['plain']:.2f}s; the launcher alone with nothing to "
                        f"send {med['launcher_noop']:.2f}s, against launcher - plain = "
                        f"{med['launcher'] - med['plain']:.2f}s"),
        c.figure("1c", "sync: second sync file bytes sent", max(second_literal), "==", 0, goal="0 bytes",
                 runs=second_literal, unit="bytes",
                 detail=f"second `fab sync-cache` took {med['second']:.2f}s (median)"),
    ]
    c.emit("sync", vars(args), figures, [
        f"1: model {args.model_mb:g} MB; missing {row['missing_bytes']} bytes on mac4; plain rsync sent "
        f"{c.median(plain_sent)} bytes; commands: `{c.fab_command(lab, 'sync-cache', '--host', 'mac4')}` "
        f"vs `rsync -a --stats -e '<the inventory ssh command>' {lab.repo('local')}/ {host.destination}:{dest}/`",
    ])


if __name__ == "__main__":
    main()
