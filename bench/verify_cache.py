"""Figure 2: `fab verify-cache` (fast check).

2a: every lab host (4) against one (hosts are probed in parallel).
2b: the --model-mb model (about 1 GB) against a 10 MB one, 4 hosts each (the fast check reads
metadata only, never weight bytes). Both inventories name hf_cache explicitly, so neither side pays
for resolving the cache root with huggingface_hub on the host.
Runs alternate between the two sides; the figure is the ratio of the medians.
2b-shared: the same with every cache in huggingface_hub 2.x's shared layout (``layouts.py``).
2c: 8 hosts against one, on a lab of its own with 8 sshds (``FAN_HOSTS``) and a --fan-model-mb model
(host count, not bytes: 2b shows the model size does not matter to the fast check). Its details
split a host's cost: fab's start, an ssh session running `true`, the cache probe alone (no ssh),
on_hosts over 1 and over 8 hosts, and the CPU seconds the run took (fab and every host's processes).
"""
import os
import shutil
import time

import common as c
import layouts
from thunderlane import lab as labmod, remote
from thunderlane.onhost import probe


def small_inventory(lab, size_mb):
    """Every host (and local) given a complete ``size_mb`` cache of its own, in an inventory."""
    _, repo = labmod.build_fixtures(labmod.paths(lab.dir), size_mb)
    root = lab.dir / f"small-{size_mb:g}mb"
    for host in ["local", *lab.hosts]:
        dst = root / host / "hub" / c.REPO
        if not dst.is_dir():
            shutil.rmtree(dst.parent, ignore_errors=True)
            dst.parent.mkdir(parents=True)
            shutil.copytree(repo, dst, symlinks=True)

    def change(data):
        data["local"]["hf_cache"] = str(root / "local" / "hub")
        for name, h in data["hosts"].items():
            h["hf_cache"] = str(root / name / "hub")
    return c.write_inventory(lab, f"hosts-{size_mb:g}mb.yaml", change)


def big_inventory(lab):
    def change(data):
        data["local"]["hf_cache"] = str(lab.cache("local"))
        for name, h in data["hosts"].items():
            h["hf_cache"] = str(lab.cache(name))
    return c.write_inventory(lab, "hosts-explicit-cache.yaml", change)


def probe_ms(cache_root, n=21):
    """Median time of the fast probe itself (in-process, no ssh): what the model size can change."""
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        probe.cache_facts(str(cache_root), "mlx-community/gemma-4-e2b-4bit")
        ts.append(time.perf_counter() - t0)
    return 1000 * c.median(ts)


def fan_out(lab, n=5):
    """In-process, no fab start: median seconds of thunderlane.remote.on_hosts over 1 host and over 4,
    running `true` (connection and session only) and the cache probe."""
    inv = lab.inv()
    hosts = [inv.host(h) for h in c.BYTE_HOSTS]
    jobs = {"true": lambda h: remote.run(inv, h, ["true"]),
            "probe": lambda h: remote.run_probe(inv, h, ["cache", inv.repo_id, "-"])}
    return on_hosts_medians(hosts, jobs, n)


def on_hosts_medians(hosts, jobs, n):
    """{(job, hosts): median seconds} of thunderlane.remote.on_hosts running each job on the second
    host alone and on all of ``hosts``, ``n`` times each."""
    out = {}
    for name, fn in jobs.items():
        for group in (hosts[1:2], hosts):
            ts = []
            for _ in range(n):
                t0 = time.perf_counter()
                remote.on_hosts(group, fn)
                ts.append(time.perf_counter() - t0)
            out[(name, len(group))] = c.median(ts)
    return out


def alternate(runs, a, b):
    """Time ``a()`` and ``b()`` ``runs`` times each, alternating which goes first."""
    ta, tb = [], []
    for i in range(runs):
        for f, out in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            out.append(f())
    return ta, tb


def timed_ok(lab, *args, inventory_path=None):
    def f():
        r = c.fab(lab, *args, inventory_path=inventory_path)
        if r.code or not r.data["ok"]:
            raise RuntimeError(f"fab {' '.join(args)} failed: {r.stdout[-800:]} {r.stderr[-800:]}")
        return r.seconds
    return f


FAN_HOSTS = [f"mac{i}" for i in range(4, 12)]


def _reaped_cpu(lab):
    """CPU seconds of every process this bench and the lab's sshd listeners have reaped: fab (our
    child) and each host's ssh sessions with their shells and probes (the listener reaps a session,
    which has reaped its own children: /proc/PID/stat cutime + cstime)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = os.times().children_user + os.times().children_system
    for name in lab.hosts:
        pid = labmod.sshd_pid(lab.dir, name)
        if pid:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[13]) + int(fields[14])) / tick  # cutime, cstime (fields 16, 17)
    return total


def sessions_ended(pids, within=5.0):
    """Wait (at most ``within`` seconds) until none of the processes ``pids`` (the lab's sshd
    listeners) has a child left: a session's sshd ends after fab has its answer and has exited,
    and its CPU is reaped only then (read earlier, it would count towards the next run: the 8-host
    run's towards the 1-host run's)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(open(f"/proc/{pid}/task/{pid}/children").read().split() for pid in pids):
            return
        time.sleep(0.01)


def cpu_seconds(lab, f):
    """``f()``'s result and the CPU seconds (fab + every host's sessions) spent during it, once
    every session it opened has ended."""
    before = _reaped_cpu(lab)
    out = f()
    sessions_ended([pid for pid in (labmod.sshd_pid(lab.dir, name) for name in lab.hosts) if pid])
    return out, _reaped_cpu(lab) - before


def child_cpu(f):
    """``f()``'s result and the CPU seconds of the children it ran and reaped (one process's
    own work, e.g. fab's single-threaded start)."""
    before = os.times()
    out = f()
    after = os.times()
    return out, after.children_user + after.children_system - before.children_user - before.children_system


def fan_out_phases(lab, n=5):
    """Medians (s): fab's start, on_hosts over 1 host and over 8 (`true`: session only; the cache
    probe), and the probe alone on one host's cache without ssh."""
    inv = lab.inv()
    hosts = [inv.host(h) for h in FAN_HOSTS]
    jobs = {"true": lambda h: remote.run(inv, h, ["true"]),
            "probe": lambda h: remote.run_probe(inv, h, ["cache", inv.repo_id, h.hf_cache or "-"])}
    starts = [child_cpu(lambda: c.run([c.FAB, "--list"], env=lab.env(), check=True)) for _ in range(n)]
    out = {"start": c.median([r.seconds for r, _ in starts]), "start_cpu": c.median([cpu for _, cpu in starts]),
           "probe_alone": c.median([c.run(remote.probe_argv(c.PY, ["cache", inv.repo_id, str(lab.cache("mac5"))],
                                                            stub=True),
                                          env=dict(os.environ, HOME=str(lab.dir / "mac5")), check=True).seconds
                                    for _ in range(n)])}  # as fab runs it on mac5 (its kept, compiled copy)
    out.update({f"{name}_{size}": t for (name, size), t in on_hosts_medians(hosts, jobs, n).items()})
    return out


def eight_hosts(args):
    """Figure 2c: `fab verify-cache` on 8 hosts vs on one (mac5), alternated, with CPU seconds."""
    with c.lab_session("fan8", FAN_HOSTS, args.fan_model_mb) as lab:
        c.set_complete(lab, FAN_HOSTS[0])  # the lab's first host is seeded partial
        c.fab(lab, "verify-cache", check=True)  # warm-up
        cpu = {8: [], 1: []}

        def timed(*hosts_flag, n):
            def f():
                secs, used = cpu_seconds(lab, timed_ok(lab, "verify-cache", *hosts_flag))
                cpu[n].append(used)
                return secs
            return f
        eight, one = alternate(args.runs, timed(n=8), timed("--hosts", "mac5", n=1))
        c.log(f"8 hosts {c.rounded(eight)} 1 host {c.rounded(one)}")
        ph = fan_out_phases(lab)
        cmd_eight, cmd_one = c.fab_command(lab, "verify-cache"), c.fab_command(lab, "verify-cache", "--hosts", "mac5")
    m8, m1 = c.median(eight), c.median(one)
    cpu8, cpu1 = c.median(cpu[8]), c.median(cpu[1])
    fig = c.figure("2c", "verify-cache: 8 hosts vs 1", m8 / m1, "<=", 1.3,
                   runs=c.rounded([a / b for a, b in zip(eight, one)]),
                   detail=f"median 8 hosts {m8:.3f}s, 1 host {m1:.3f}s ({args.fan_model_mb:g} MB model); CPU seconds "
                          f"(fab + sshds + probes) {cpu8:.2f} vs {cpu1:.2f}: {(cpu8 - cpu1) / 7:.3f} per extra host "
                          f"on {os.cpu_count()} cores; fab's start {ph['start']:.3f}s; in-process on_hosts, 1 host -> 8: "
                          f"`true` {ph['true_1']:.3f}s -> {ph['true_8']:.3f}s, cache probe {ph['probe_1']:.3f}s -> "
                          f"{ph['probe_8']:.3f}s; the probe alone, no ssh, {ph['probe_alone']:.3f}s")
    # the bound the run's own CPU puts on the 8-host run (explain.cpu_bound): fab's start on one core
    # (`fab --list`: its imports; the rest of its setup is counted as spreadable, so the bound is low)
    fig["facts"] = {"cpu": {"cores": os.cpu_count(), "start_cpu_s": ph["start_cpu"], "cpu_s": cpu8,
                            "baseline_cpu_s": cpu1, "baseline_wall_s": m1, "extra_units": len(FAN_HOSTS) - 1,
                            "unit": "extra host"}}
    fig["details"] = {"medians_s": {"eight": round(m8, 4), "one": round(m1, 4), **{k: round(v, 4) for k, v in ph.items()}},
                      "cpu_s": {"eight": c.rounded(cpu[8]), "one": c.rounded(cpu[1])},
                      "runs_s": {"eight": c.rounded(eight), "one": c.rounded(one)}, "cores": os.cpu_count()}
    return fig, f"2c: `{cmd_eight}` vs `{cmd_one}` (a lab of {len(FAN_HOSTS)} hosts)"


def main():
    p = c.parser(__doc__, runs=9)
    p.add_argument("--fan-model-mb", type=float, default=10.0, help="model size for figure 2c's 8-host lab")
    p.add_argument("--only-2c", action="store_true", help="measure figure 2c only")
    args = p.parse_args()
    if args.only_2c:
        fig, note = eight_hosts(args)
        c.emit("verify_cache", vars(args), [fig], [note])
        return
    with c.lab_session("bytes", c.BYTE_HOSTS, args.model_mb) as lab:
        if not c.fab(lab, "verify-cache", "--hosts", "mac4").data["ok"]:
            c.set_complete(lab, "mac4")
        c.fab(lab, "verify-cache")  # warm-up
        four, one = alternate(args.runs, timed_ok(lab, "verify-cache"), timed_ok(lab, "verify-cache", "--hosts", "mac5"))
        c.log(f"4 hosts {c.rounded(four)} 1 host {c.rounded(one)}")
        fan = fan_out(lab)
        small, big = small_inventory(lab, 10), big_inventory(lab)
        t_big, t_small = alternate(args.runs, timed_ok(lab, "verify-cache", inventory_path=big),
                                   timed_ok(lab, "verify-cache", inventory_path=small))
        c.log(f"{args.model_mb:g} MB {c.rounded(t_big)} 10 MB {c.rounded(t_small)}")
        p_big, p_small = probe_ms(lab.cache("mac5")), probe_ms(small.parent / "small-10mb" / "mac5" / "hub")
        _, repo10 = labmod.build_fixtures(labmod.paths(lab.dir), 10)
        s_big, _ = layouts.shared_inventory(lab, lab.hosts, name="hosts-shared.yaml")
        s_small, _ = layouts.shared_inventory(lab, lab.hosts, name="hosts-shared-10mb.yaml",
                                              root=lab.dir / "shared-10mb", src_repo=repo10)
        ts_big, ts_small = alternate(args.runs, timed_ok(lab, "verify-cache", inventory_path=s_big),
                                     timed_ok(lab, "verify-cache", inventory_path=s_small))
        c.log(f"shared: {args.model_mb:g} MB {c.rounded(ts_big)} 10 MB {c.rounded(ts_small)}")
        cmd_sbig, cmd_ssmall = c.fab_command(lab, "verify-cache", inventory_path=s_big), \
            c.fab_command(lab, "verify-cache", inventory_path=s_small)
        cmd_four, cmd_one = c.fab_command(lab, "verify-cache"), c.fab_command(lab, "verify-cache", "--hosts", "mac5")
        cmd_big, cmd_small = c.fab_command(lab, "verify-cache", inventory_path=big), \
            c.fab_command(lab, "verify-cache", inventory_path=small)
    figures = [
        c.figure("2a", "verify-cache: 4 hosts vs 1", c.median(four) / c.median(one), "<=", 1.3,
                 runs=c.rounded([a / b for a, b in zip(four, one)]),
                 detail=f"median 4 hosts {c.median(four):.3f}s, 1 host {c.median(one):.3f}s; in-process "
                        f"thunderlane.remote.on_hosts, 1 host -> 4: `true` {fan[('true', 1)]:.3f}s -> "
                        f"{fan[('true', 4)]:.3f}s, cache probe {fan[('probe', 1)]:.3f}s -> {fan[('probe', 4)]:.3f}s "
                        f"(plus local's probe in fab; all 'hosts' share this machine's {os.cpu_count()} cores)"),
        c.figure("2b", f"verify-cache: {args.model_mb:g} MB model vs 10 MB", c.median(t_big) / c.median(t_small),
                 "<=", 1.2, runs=c.rounded([a / b for a, b in zip(t_big, t_small)]),
                 detail=f"median {args.model_mb:g} MB {c.median(t_big):.3f}s, 10 MB {c.median(t_small):.3f}s (4 hosts each); the "
                        f"probe alone (in-process, one host): {p_big:.1f} ms vs {p_small:.1f} ms"),
        c.figure("2b-shared", f"verify-cache (shared layout): {args.model_mb:g} MB model vs 10 MB",
                 c.median(ts_big) / c.median(ts_small), "<=", 1.2,
                 runs=c.rounded([a / b for a, b in zip(ts_big, ts_small)]),
                 detail=f"median {args.model_mb:g} MB {c.median(ts_big):.3f}s, 10 MB {c.median(ts_small):.3f}s "
                        "(4 hosts each, every cache's weight blobs in its hub root's shared store)"),
    ]
    fig, note = eight_hosts(args)
    figures.append(fig)
    c.emit("verify_cache", vars(args), figures, [note,
        f"2b-shared: `{cmd_sbig}` vs `{cmd_ssmall}`",
        f"2a: `{cmd_four}` vs `{cmd_one}`",
        f"2b: `{cmd_big}` vs `{cmd_small}` (same lab; the two inventories differ only in hf_cache)",
    ])


if __name__ == "__main__":
    main()
