"""Figure 4: `fab verify-dataset` on a 100k-row corpus against `wc -l` + `sha256sum` of the same files.

The corpus (thunderlane.lab.fixtures.corpus, --rows rows) is put on local and mac5 and named by an
inventory variant; `fab verify-dataset --hosts mac5` sums local's copy and mac5's (sha256, lines, bytes)
and takes local's row verdicts from the memo (<local runs_root>/.row-memo). The baseline is what a
person runs by hand for the same assurance on two hosts: `wc -l FILES && sha256sum FILES` on local's
copy and, at once, over ssh (the lab's sshd, the lane's ssh options) on mac5's; the same two commands
on both copies here, with no ssh (the lab's host folders are local), are reported beside it. Figure 4 is that usual, repeated
run (the memo exists); figure 4-cold removes the memo before each timed run, so local parses every
row once more (the first run after a change of bytes or of the validator): no goal, shown as it is. Also measured, to say where the time goes (figure["details"] holds every phase's times):
fab's start, local's probe and a host's --sums probe without ssh, an ssh session and the --sums probe
over ssh, the same fab command on the lab's 600-row corpus, and the CPython floor (json.loads; sha256).
"""
import cProfile
import hashlib
import json
import pstats
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common as c
from thunderlane import onhost, sshopts
from thunderlane.lab.fixtures.corpus import build_corpus

FILES = ("train.jsonl", "valid.jsonl", "test.jsonl", "manifest.json")


def corpus(lab, rows):
    root = lab.dir / f"corpus-{rows}"
    if not (root / "manifest.json").exists():
        build_corpus(root, rows=rows)
    for host in ("local", "mac5"):
        dst = lab.dir / f"corpus-{rows}-on" / host
        if not (dst / "manifest.json").exists():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(root, dst)

    def change(data):
        data["local"]["dataset_root"] = str(lab.dir / f"corpus-{rows}-on" / "local")
        data["hosts"]["mac5"]["dataset_root"] = str(lab.dir / f"corpus-{rows}-on" / "mac5")
    return root, c.write_inventory(lab, f"hosts-corpus-{rows}.yaml", change)


def by_hand(lab, inv_path, rows, hosts=("local", "mac5")):
    """What a person runs by hand for the same assurance: `wc -l F && sha256sum F` on local's copy and,
    over ssh with the lane's options (sshopts.ssh_command: pinned key, BatchMode...), on each host's,
    every host at once. The argvs, one per host."""
    inv = lab.inv(inv_path)
    argvs = []
    for name in hosts:
        d = lab.dir / f"corpus-{rows}-on" / name
        files = " ".join(shlex.quote(str(d / f)) for f in FILES)
        line = f"wc -l {files} && sha256sum {files}"
        h = inv.local if name == "local" else inv.host(name)
        argvs.append(["sh", "-c", line] if h.is_local else [*shlex.split(sshopts.ssh_command(inv, h)), h.hostname, line])
    return argvs


def baseline(argvs):
    """Seconds for ``argvs`` run at once, until the last ends."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(a, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL) for a in argvs]
    if any(p.wait() for p in procs):
        raise RuntimeError("wc/sha256sum failed: " + " | ".join(shlex.join(a) for a in argvs))
    return time.perf_counter() - t0


def key_exchange(argv):
    """The key exchange OpenSSH's client negotiates for ``argv`` (its ``-v`` log), or None."""
    p = subprocess.run([argv[0], "-v", *argv[1:-1], "true"], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    found = [line.split("kex: algorithm: ", 1)[1] for line in p.stderr.splitlines() if "kex: algorithm: " in line]
    return found[0].strip() if found else None


def floor(root):
    """CPython's own cost for the probe's unavoidable work on one copy: parse every row, hash."""
    t0 = time.perf_counter()
    for name in FILES[:3]:
        with open(root / name, "rb") as f:
            for raw in f:
                json.loads(raw)
    t_json = time.perf_counter() - t0
    t0 = time.perf_counter()
    for name in FILES:
        hashlib.sha256((root / name).read_bytes()).hexdigest()
    return t_json, time.perf_counter() - t0


def profile(root):
    """cProfile of the probe's dataset_facts on one copy: share of time in row judging and in sha256."""
    from thunderlane.onhost import probe
    prof = cProfile.Profile()
    prof.runcall(probe.dataset_facts, str(root))
    stats = pstats.Stats(prof).stats  # {(file, line, func): (cc, nc, tottime, cumtime, callers)}
    total = sum(v[2] for v in stats.values())
    judge = sum(v[3] for k, v in stats.items() if k[2] == "_judge_row")
    sha = sum(v[2] for k, v in stats.items() if "_hashlib" in k[2])
    return judge / total, sha / total


def phases(lab, inv_path, rows, hand):
    """One run of each piece of a verify-dataset (seconds): fab's start (`fab --list`, the fabfile's
    imports), local's probe (every row validated), a host's probe (`dataset --sums`), both without ssh
    and started as the lane starts them (`python -S`),
    and in-process over ssh to mac5: a session running `true`, and the host's --sums probe."""
    from thunderlane import remote
    inv = lab.inv(inv_path)
    mac5 = inv.host("mac5")
    src, on = onhost.probe_source(), lab.dir / f"corpus-{rows}-on"
    out = {"start": c.run([c.FAB, "--list"], env=lab.env(inv_path), check=True).seconds,
           "local_sums": c.run([c.PY, "-S", "-c", src, "dataset", on / "local", "--sums"], check=True).seconds,
           "local_rows": c.run([c.PY, "-S", "-c", src, "dataset", on / "local"], check=True).seconds,
           "host_sums": c.run([c.PY, "-S", "-c", src, "dataset", on / "mac5", "--sums"], check=True).seconds}
    out["ssh_cli_true"] = baseline([[*hand[1][:-1], "true"]])  # the baseline's OpenSSH session alone
    for key, fn in (("ssh_true", lambda: remote.run(inv, mac5, ["true"])),
                    ("ssh_sums", lambda: remote.run_probe(inv, mac5, ["dataset", mac5.dataset_root, "--sums"]))):
        t0 = time.perf_counter()
        fn()
        out[key] = time.perf_counter() - t0
    return out


def main():
    p = c.parser(__doc__, runs=5)
    p.add_argument("--rows", type=int, default=100_000)
    args = p.parse_args()
    with c.lab_session("bytes", c.BYTE_HOSTS, args.model_mb) as lab:
        root, inv = corpus(lab, args.rows)
        size = sum((root / f).stat().st_size for f in FILES)

        memo = Path(lab.inv(inv).local.runs_root) / ".row-memo"

        def cold():
            shutil.rmtree(memo, ignore_errors=True)
            return fab(inv)

        def fab(inventory_path=None):
            r = c.fab(lab, "verify-dataset", "--hosts", "mac5", inventory_path=inventory_path)
            if r.code or not r.data["ok"]:
                raise RuntimeError(r.stdout[-800:] + r.stderr[-800:])
            return r.seconds
        hand = by_hand(lab, inv, args.rows)
        here = [["sh", "-c", a[-1]] for a in hand]  # both copies read on this machine, no ssh: the old baseline
        fab(inv), baseline(hand)  # warm-up
        t = {"fab": [], "base": [], "cold": [], "fixed": [], "base_local": []}
        for i in range(args.runs):
            trio = (("fab", lambda: fab(inv)), ("base", lambda: baseline(hand)), ("cold", cold),
                    ("base_local", lambda: baseline(here)))
            for key, f in trio if i % 2 == 0 else trio[::-1]:
                t[key].append(f())
            t["fixed"].append(fab())
            for key, v in phases(lab, inv, args.rows, hand).items():
                t.setdefault(key, []).append(v)
            c.log(f"run {i + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in t.items()))
        t_json, t_hash = floor(root)
        kex = key_exchange(hand[1])
        share_judge, share_sha = profile(root)
        command = c.fab_command(lab, "verify-dataset", "--hosts", "mac5", inventory_path=inv)
    m = {k: c.median(v) for k, v in t.items()}
    # the critical path as the phases predict it: fab's start, then local's rows and mac5's sums at once
    path = m["start"] + max(m["local_sums"], m["ssh_sums"])
    path_cold = m["start"] + max(m["local_sums"] + m["local_rows"], m["ssh_sums"])
    fig = c.figure(
        "4", f"verify-dataset ({args.rows // 1000}k rows) vs wc -l + sha256sum", m["fab"] / m["base"], "<=", 2.0,
        runs=c.rounded([a / b for a, b in zip(t["fab"], t["base"])]),
        detail=f"{size / 1e6:.1f} MB per copy, 2 copies: fab {m['fab']:.3f}s vs wc+sha256sum {m['base']:.3f}s, "
               f"local's copy here and mac5's over one ssh session at once (the lane's ssh options), what a person "
               f"runs by hand for the same assurance; both copies read here with no ssh {m['base_local']:.3f}s "
               f"(fab {m['fab'] / m['base_local']:.2f}x that); the baseline's OpenSSH session running `true` alone "
               f"{m['ssh_cli_true']:.3f}s ({kex or 'its default key exchange'}), Fabric's (paramiko, curve25519) "
               f"{m['ssh_true']:.3f}s. "
               f"Where it goes (medians): fab's start (`fab --list`) {m['start']:.3f}s = "
               f"{m['start'] / m['base']:.2f}x the baseline on its own; local's probe, sums only, {m['local_sums']:.3f}s "
               f"(no ssh; its rows' verdicts read from the memo); mac5's probe, sums only, {m['host_sums']:.3f}s alone and "
               f"{m['ssh_sums']:.3f}s over ssh (a session running `true`: {m['ssh_true']:.3f}s); start + the slower "
               f"of the two = {path:.3f}s predicted, {path / m['base']:.2f}x; the same fab on the 600-row corpus "
               f"{m['fixed']:.3f}s. CPython floor on one copy: json.loads of every row {t_json:.3f}s, sha256 "
               f"{t_hash:.3f}s; cProfile of local's probe.dataset_facts: {100 * share_judge:.0f}% in _judge_row, "
               f"{100 * share_sha:.0f}% in sha256")
    cold_fig = c.figure(
        "4-cold", f"verify-dataset ({args.rows // 1000}k rows), memo removed, vs wc -l + sha256sum", m["cold"] / m["base"],
        "<=", 2.0, goal="none: the first run after a change (figure 4 holds the goal)",
        runs=c.rounded([a / b for a, b in zip(t["cold"], t["base"])]),
        detail=f"fab {m['cold']:.3f}s vs {m['base']:.3f}s: local sums ({m['local_sums']:.3f}s), misses the memo, then "
               f"parses every row ({m['local_rows']:.3f}s alone) and writes the memo; predicted {path_cold:.3f}s, "
               f"{path_cold / m['base']:.2f}x")
    cold_fig["ok"] = None
    fig["details"] = {"medians_s": {k: round(v, 4) for k, v in m.items()}, "runs_s": {k: c.rounded(v, 4) for k, v in t.items()},
                      "predicted_s": round(path, 4), "predicted_cold_s": round(path_cold, 4), "bytes_per_copy": size, "rows": args.rows,
                      "floor_s": {"json_loads": round(t_json, 4), "sha256": round(t_hash, 4)},
                      "profile_share": {"judge_row": round(share_judge, 3), "sha256": round(share_sha, 3)}}
    cold_fig["details"] = fig["details"]
    c.emit("verify_dataset", vars(args), [fig, cold_fig], [
        f"4: `{command}` vs `wc -l F && sha256sum F` on local's copy and `{shlex.join(hand[1][:-1])} '<the same on "
        f"mac5's copy>'` at once "
        f"(F = {' '.join(FILES)}), alternating the order; 4-cold: the same fab after removing <local runs_root>/.row-memo; Python {sys.version.split()[0]}"])


if __name__ == "__main__":
    main()
