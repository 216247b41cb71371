"""Run every benchmark on the bench lab and write docs/BENCHMARKS.md (issue 5).

  .venv/bin/python bench/run_all.py [--model-mb 1000] [--train-model-mb 2] [--runs N] [--only sync,mirror]

Each script runs in its own process and prints one JSON line; this driver collects them into a
table (figure, goal, measured median, pass/miss, command) with details and notes, and explains
every missed goal (cause, evidence, proposed fix). The bench lab lives under $THUNDER_BENCH_LAB
(default /tmp/thunder-bench-lab) on 127.78.0.x with ring ports from 33400: `.lab/` is never used.
"""
import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = ROOT / ".venv" / "bin" / "python"

# (script, which model size it takes): byte-bound first, then training, then memory (both)
SCRIPTS = [("sync", "bytes"), ("verify_cache", "bytes"), ("verify_deep", "bytes"), ("verify_dataset", "bytes"),
           ("train_overhead", "train"), ("mirror", "train"), ("resume", "train"), ("memory", "both"),
           ("evaluate", "train")]

GENERAL_NOTES = [
    "Ratios, not absolute times: the lab is one 2-core VM, so every 'host' is a loopback sshd on the same "
    "two cores, and the machine is shared: times are noisy. "
    "Timed pairs alternate their order run by run; a ratio is the median of one side over the median of "
    "the other; the per-run ratios are listed in the details.",
    "Byte-bound figures (1-4) use the --model-mb model (default 1000 MB: 957 MB of weights in two shards). "
    "Training figures (5-7) use a 2 MB model: a window's time there is compute, not bytes, and a 1 GB "
    "model would make each window minutes long on this CPU.",
    "All reads are from the page cache (24 GB RAM, the blobs are read before timing); the figures say "
    "nothing about disk speed.",
    "The lab's 'network' is loopback ssh (about 200-300 MB/s, limited by ssh's cipher on one core), so "
    "fixed costs (interpreter start, ssh handshakes, verification probes) weigh far more against the "
    "transfer or the training than they would between real Macs over Thunderbolt or Wi-Fi.",
]

# Why a goal is missed and what to change in the product: shown under "Misses" when it is.
ANALYSIS = {
    "1b": (
        'Fixed cost, not the transfer. The bytes are right (1a: rsync sends what is missing and nothing '
        'more), and the details show that the extra time is what a sync costs when there is nothing to '
        'send: fab - plain is close to the no-op `fab sync-cache`, launcher - plain close to the no-op '
        "launcher. What plain `rsync -a` does not pay: fab's own start (fabric, paramiko, invoke "
        'imports), a verify of local and the host before (thunderlane/sync.py sync_cache: gather + '
        'judge_caches) and another after, and in the launcher bash itself, the `rsync --version` check, '
        'the cleanup session and three ordered rsync passes (blobs, snapshots, then the rest with '
        'refs/), each starting a remote rsync and exchanging a file list (the working tree measured '
        "here already multiplexes them over one ssh connection with ControlMaster). On the lab's "
        'loopback a 1 GB transfer takes only a few seconds, so this fixed cost (the no-op sync in the '
        'details) is a large share; to meet 1.10 it would have to stay under a tenth of the transfer, '
        'which at loopback speed means a model of several GB, or a real link: 3.4 GB at 100 MB/s is '
        'about 35 s, where the same fixed cost is about 5%. Done so far: one ssh connection '
        "(ControlMaster) for all the launcher's steps, and after the launcher only the host is probed "
        "again (local's facts from before still hold); together they took the no-op sync from about 1.9 "
        's to about 1.1 s. Left: the version check could run inside the cleanup session (one remote '
        'command fewer). None of this reaches 1.10 at 1 GB on loopback.',
    ),
    "2a": (
        "The lab runs every 'host' on the same 2 cores: four hosts mean five probe interpreters (local + "
        "4), four sshd sessions and four paramiko handshakes in fab's threads, all on two cores, whereas "
        "real hosts each run their own probe on their own CPU. `thunderlane.remote.on_hosts` does run the "
        "hosts in parallel (in the details, a threaded `true` on 4 hosts takes little longer than on one); "
        "what grows is the probes' CPU work competing for 2 cores, and whatever else runs on this shared "
        "machine takes its share of the same cores. Proposed fix (thunderlane/remote.py run_probe): send the probe "
        "source once per host on stdin instead of as a 19 KB `-c` argument and keep one Fabric connection "
        "per host for the whole task; these reduce the per-host CPU but cannot make 5 interpreters cost "
        "the same as 2 on a 2-core machine.",
    ),
    "2b": (
        "Noise. The fast probe reads metadata only: its own time (in-process, no ssh) is given in the "
        "details for both models, a few milliseconds either way (the 1 GB model has more tensors, so a "
        "longer safetensors header), against about half a second of fab start, ssh and interpreter start "
        "that does not depend on the model. A ratio above 1.2 here is the shared machine's noise between "
        "runs, not bytes read.",
    ),
    "3": ("Not expected: hashlib uses OpenSSL's SHA-256; compare with the openssl figure in the details.",),
    "4": (
        "CPython's per-row cost, and fixed cost. `wc -l` + `sha256sum` read 22 MB per copy at memory speed; "
        "the probe must also decode and validate each of 100 000 JSON rows (thunderlane/onhost/probe.py "
        "jsonl_facts -> _judge_row -> json.loads + row_format/_check_messages). The details give the "
        "evidence: cProfile puts most of the probe's time in _judge_row and almost none in sha256; "
        "json.loads alone of every row (no validation, no ssh) takes several times the whole baseline; and "
        "the same fab run on the 600-row corpus (fab start, ssh, two probes, next to no work) is by itself "
        "about twice the baseline or more. So 2.0 cannot be met by a stdlib Python probe on this machine "
        "at this size. Proposed fixes (thunderlane/verify.py "
        "verify_dataset and thunderlane/onhost/probe.py dataset_facts): validate rows once, on local (the "
        "reference), and on the hosts only hash, validating a host's file only when its sha256 differs "
        "from local's (identical bytes are identical rows): this halves the CPU on a 2-core lab and takes "
        "validation off every host's critical path; and split a large file's rows across a "
        "process pool (multiprocessing, stdlib) on the host doing the validation.",
    ),
    "5": (
        'Fixed cost around a 10-step window of a 2 MB model, and noise. The details split the '
        'difference per run pair. The lane-only phases: preflight (fab start; one probe per host for '
        'dataset, cache and run facts; the chunk runner starts `python -m thunderlane.launcher_helpers lock-dir` and '
        '`committed-step`, which probes the writer again), plan-window (another thunderlane.launcher_helpers '
        "process, which probes the writer, then local's dataset and cache in one probe), the commits "
        "beyond the validation both runs do (weights digest and all_gather, three "
        "safetensors files written, fsynced and hashed, a barrier, checkpoint.json; mlx_lm's own saves "
        "do none of this), and the gate (after the window the chunk runner's committed-step again, then "
        'window.runner.finish: reap and run facts, one probe per host). Each thunderlane.launcher_helpers process pays the '
        'imports of fabric/paramiko before doing anything (the lock-dir time in the details). Their '
        'sum, as a share of the bare run, is the ratio to expect without noise (in the details); the '
        'shared phases (launch, steps) differ only by noise, which on this shared machine swings single '
        'runs by tens of percent. With the real E2B model, loading and steps take far longer than with '
        'this 2 MB one and the same few seconds are a small share. Done: train_window takes the start '
        "step from the preflight's facts (no second committed()), preflight and the window's end ask "
        'each host once (one probe session per host), and `thunderlane.launcher_helpers lock-dir` no longer imports '
        'Fabric. Left: hand the start step to the chunk runner (e.g. THUNDER_START_STEP) so that '
        'launchers/run_gemma4_e2b_nko_correction_chunks.sh skips its first `committed-step`; '
        "window.plan.plan_window: run its three probes in parallel or reuse the preflight's facts; keep the "
        "commit's fsyncs (they are what makes a commit atomic).",
    ),
    "7": ("Not expected: a resumed window restores adapters, optimizer state, RNG key and data position.",),
    "8:lab-up": (
        'Only lab-up builds anything. It builds the model in a child process (`python -m '
        'thunderlane.lab.fixtures.model`, so fab never loads mlx) and copies the partial shard head in 1 '
        'MiB chunks; an earlier version built in-process and peaked at 689 MB with the 1 GB model.',
    ),
}


def machine():
    def first_line(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True)
            return (p.stdout or p.stderr).splitlines()[0]
        except (OSError, IndexError):
            return "?"
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "0")
    return (f"{os.cpu_count()} cores, {int(mem) / 2**20:.0f} GB RAM, {platform.platform()}, Python "
            f"{platform.python_version()}, {first_line(['rsync', '--version'])}, {first_line(['ssh', '-V'])}")


def code_state():
    """(HEAD, uncommitted product files, digest of the product files' contents): what was measured.
    The digest covers the working tree, so a commit of the same contents does not change it."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout
    scope = ["--", "thunderlane", "launchers", "fabfile.py"]  # the product code, not docs or tests
    files = sorted(l[3:] for l in git("status", "--porcelain", *scope).splitlines())
    h = hashlib.sha256()
    for name in sorted(git("ls-files", *scope).splitlines()):
        path = ROOT / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return git("rev-parse", "--short", "HEAD").strip(), files, h.hexdigest()[:12]


def describe_code(start, end):
    head, files, digest = start
    text = f"commit {head}" + (f" plus uncommitted changes to {', '.join(files)}" if files else "")
    text += f" (content digest {digest})"
    if end[2] != digest:
        text += (f". **The product code changed while the driver ran** (at the end: commit {end[0]}"
                 f"{', changes to ' + ', '.join(end[1]) if end[1] else ''}, content digest {end[2]}): "
                 "figures may mix versions")
    elif end[0] != head:
        text += f"; committed as {end[0]} while the driver ran (same contents)"
    return text


def run_script(name, kind, args):
    argv = [str(PY), str(HERE / f"{name}.py")]
    if kind in ("bytes", "both"):
        argv += ["--model-mb", f"{args.model_mb:g}"]
    if kind in ("train", "both"):
        argv += ["--train-model-mb", f"{args.train_model_mb:g}"]
    if args.runs and name != "memory":
        argv += ["--runs", str(args.runs)]
    shown = " ".join([".venv/bin/python", f"bench/{name}.py", *argv[2:]])
    print(f"\n=== {shown}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    p = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)  # stderr streams through
    seconds = time.monotonic() - t0
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode or not lines:
        return {"script": name, "command": shown, "seconds": seconds, "error": f"exit {p.returncode}",
                "figures": [], "notes": []}
    result = json.loads(lines[-1])
    result.update(command=shown, seconds=seconds)
    return result


def fmt(f):
    v = f["value"]
    if v is None:
        return "-"
    if f["unit"] == "bytes":
        return f"{v:,} bytes"
    if f["unit"] == "abs":
        return f"{v:.3g}"
    if f["unit"] == "MB":
        return f"{v:.0f} MB"
    return f"{v:.3f}"


def how_many(f, result):
    runs = f.get("runs")
    if f["unit"] == "MB":
        return "1 run"
    if isinstance(runs, list) and f["unit"] == "bytes":
        return f"max of {len(runs)}"
    if isinstance(runs, list) and f["unit"] != "abs":
        return f"median of {len(runs)}"
    return "max over ranks" if f["unit"] == "abs" else f"{result['params'].get('runs', '?')} runs"


def analysis_key(f):
    if f["id"].startswith("8"):
        return "8:lab-up" if "lab-up" in f["name"] else "8"
    return f["id"] if f["id"] in ANALYSIS else f["id"].rstrip("ab")


def render(results, args, started, seconds, load_before, load_after, code):
    out = ["# Benchmarks", "",
           f"Written by `.venv/bin/python bench/run_all.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` "
           f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}; the whole driver took "
           f"{seconds / 60:.1f} min. Machine: {machine()}. Load average {load_before} before, {load_after} after. "
           f"Model: {args.model_mb:g} MB for figures 1-4, "
           f"{args.train_model_mb:g} MB for 5-7. Each script runs alone too: the command column. "
           f"Code measured: {code}.", "",
           "| # | figure | goal | measured | of | result | command |", "|---|---|---|---|---|---|---|"]
    misses = []
    for r in results:
        if r.get("error"):
            out.append(f"| {r['script']} | script failed ({r['error']}) | | | | ERROR | `{r['command']}` |")
            continue
        for f in r["figures"]:
            verdict = "pass" if f["ok"] else "**MISS**"
            if not f["ok"]:
                misses.append(f)
            out.append(f"| {f['id']} | {f['name']} | {f['goal']} | {fmt(f)} | {how_many(f, r)} | {verdict} | "
                       f"`{r['command']}` |")
    out += ["", "## Details", ""]
    for r in results:
        for f in r["figures"]:
            runs = f" Per run: {f['runs']}." if f.get("runs") is not None else ""
            out.append(f"- **{f['id']}** {f['name']}: {f['detail']}.{runs}")
    out += ["", "## Misses: why, and the proposed fix", ""]
    if not misses:
        out.append("Every goal was met in this run.")
    for f in misses:
        why = ANALYSIS.get(analysis_key(f), ("No analysis written for this figure: investigate.",))[0]
        out.append(f"- **{f['id']}** {f['name']} (measured {fmt(f)}, goal {f['goal']}): {why}")
    out += ["", "## Notes", ""] + [f"- {n}" for n in GENERAL_NOTES]
    for r in results:
        out += [f"- {n}" for n in r.get("notes", [])]
        out.append(f"- `{r['command']}` took {r['seconds']:.0f} s.")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-mb", type=float, default=1000.0, help="model size for the byte-bound figures")
    p.add_argument("--train-model-mb", type=float, default=2.0, help="model size for the training figures")
    p.add_argument("--runs", type=int, default=0, help="runs per timed measurement (default: each script's)")
    p.add_argument("--only", default="", help="comma-separated script names (default: all)")
    p.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    args = p.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    started, t0 = time.time(), time.monotonic()
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    code_before = code_state()
    results = [run_script(name, kind, args) for name, kind in SCRIPTS if not only or name in only]
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    code = describe_code(code_before, code_state())
    text = render(results, args, started, time.monotonic() - t0, load_before, load_after, code)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0 if all(not r.get("error") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
