"""Run every benchmark on the bench lab and write docs/BENCHMARKS.md (issue 5).

  .venv/bin/python bench/run_all.py [--model-mb 1000] [--train-model-mb 2] [--runs N] [--only sync,mirror]

Each script runs in its own process and prints one JSON line; this driver collects them into a
table (figure, goal, measured median, pass/miss, command) with details and notes. Every explanation
is computed from the run's own measurements (bench/explain.py): the phases a script timed, the
run-to-run spread, the machine's load while the script ran, measured link rates; nothing is typed
in advance. The bench lab lives under $THUNDER_BENCH_LAB
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

import explain

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from thunderlane import fsutil  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = ROOT / ".venv" / "bin" / "python" if (ROOT / ".venv").is_dir() else Path(sys.executable)

# (script, which model size it takes): byte-bound first, then training, then memory (both)
SCRIPTS = [("sync", "bytes"), ("verify_cache", "bytes"), ("verify_deep", "bytes"), ("verify_dataset", "bytes"),
           ("links", "bytes"), ("train_overhead", "train"), ("mirror", "train"), ("resume", "train"), ("memory", "both"),
           ("evaluate", "train")]

def load1():
    return float(Path("/proc/loadavg").read_text().split()[0])


def ram_gb():
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "0")
    return int(mem) / 2**20


def machine():
    def first_line(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True)
            return (p.stdout or p.stderr).splitlines()[0]
        except (OSError, IndexError):
            return "?"
    return (f"{os.cpu_count()} cores, {ram_gb():.0f} GB RAM, {platform.platform()}, Python "
            f"{platform.python_version()}, {first_line(['rsync', '--version'])}, {first_line(['ssh', '-V'])}")


def ssh_ceiling(results):
    """ssh's cipher throughput with no link in the way, when a script measured it (bench/links.py)."""
    found = [f["facts"]["ssh_ceiling_mbit"] for r in results for f in r.get("figures", [])
             if (f.get("facts") or {}).get("ssh_ceiling_mbit")]
    return max(found) if found else None


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
    t0, load_before = time.monotonic(), load1()
    p = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)  # stderr streams through
    seconds, load = time.monotonic() - t0, (load_before, load1())
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode or not lines:
        return {"script": name, "command": shown, "seconds": seconds, "load": load, "error": f"exit {p.returncode}",
                "figures": [], "notes": []}
    result = json.loads(lines[-1])
    result.update(command=shown, seconds=seconds, load=load)
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
    if f["unit"] == "s":
        return f"{v:.2f} s"
    return f"{v:.3f}"


def how_many(f, result):
    runs = f.get("runs")
    if f["value"] is None:
        return "-"
    if f.get("of"):  # a figure computed otherwise than the median of its runs says how (figure 5: pairs)
        return f["of"]
    if f["unit"] == "MB":
        return "1 run"
    if isinstance(runs, list) and f["unit"] == "bytes":
        return f"max of {len(runs)}"
    if isinstance(runs, list) and f["unit"] != "abs":
        return f"median of {len(runs)}"
    return "max over ranks" if f["unit"] == "abs" else f"{result['params'].get('runs', '?')} runs"


def table(results):
    rows = ["| # | figure | goal | measured | of | result | command |", "|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("error"):
            rows.append(f"| {r['script']} | script failed ({r['error']}) | | | | ERROR | `{r['command']}` |")
        for f in r["figures"]:
            verdict = ("pass" if f["ok"] else "recorded" if f.get("recorded") else "skipped" if f["ok"] is None
                       else "**MISS**")
            rows.append(f"| {f['id']} | {f['name']} | {f['goal']} | {fmt(f)} | {how_many(f, r)} | {verdict} | "
                        f"`{r['command']}` |")
    return rows


def script_machine(r, ceiling):
    return explain.Machine(os.cpu_count() or 1, tuple(r.get("load", ())), ceiling)


def details(results, ceiling):
    """Each figure's detail, its per-run values, and for a figure that carries phases or facts the
    computed explanation."""
    out = []
    for r in results:
        for f in r["figures"]:
            runs = f" Per run: {f['runs']}." if f.get("runs") is not None else ""
            out.append(f"- **{f['id']}** {f['name']}: {f['detail'] or 'no detail given'}.{runs}")
            if explain.links(f):
                out.append(f"  Measured link rates: {explain.links(f)}.")
            if f["ok"] and (f.get("phases") or f.get("facts")):
                out.append(f"  Computed: {explain.explain(f, script_machine(r, ceiling))}")
    return out


def misses(results, ceiling):
    out = [f"- **{f['id']}** {f['name']}: {explain.explain(f, script_machine(r, ceiling))}"
           for r in results for f in r["figures"] if f["ok"] is False]
    out += [f"- **{r['script']}** failed ({r['error']}): no figures (its stderr is in the driver's log)."
            for r in results if r.get("error")]
    skipped = [f"{f['id']} ({f['detail']})" for r in results for f in r["figures"]
               if f["ok"] is None and not f.get("recorded")]
    if not out:
        out = ["Every goal measured in this run was met."]
    return out + ([f"- Not measured: {'; '.join(skipped)}."] if skipped else [])


def unique_ids(results):
    """Two scripts may measure figures of one id (e.g. a no-op sync on loopback and on a link): the
    later ones get their script's name appended, so every row and explanation names one figure."""
    seen = set()
    for r in results:
        for f in r["figures"]:
            if f["id"] in seen:
                f["id"] = f"{f['id']} ({r['script']})"
            seen.add(f["id"])
    return results


def render(results, args, started, seconds, load, code, measured_by=None):
    """The document. ``measured_by``: the driver's arguments when the measurements are an earlier
    run's (``--render``), named beside the command that wrote the text."""
    ceiling = ssh_ceiling(unique_ids(results))
    cmd = f"`.venv/bin/python bench/run_all.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`"
    if measured_by is not None:
        cmd = (f"`.venv/bin/python bench/run_all.py{' ' + ' '.join(measured_by) if measured_by else ''}` "
               f"(this text written again from its measurements by {cmd})")
    out = ["# Benchmarks", "",
           f"Measured by {cmd} "
           f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}; the whole driver took "
           f"{seconds / 60:.1f} min. Machine: {machine()}. Load average {load[0]:.2f} before, {load[1]:.2f} after. "
           f"Model: {args.model_mb:g} MB for the byte-bound figures, {args.train_model_mb:g} MB for the training "
           f"ones. Each script runs alone too: the command column. Code measured: {code}.", ""]
    out += table(results)
    out += ["", "## Details", ""] + details(results, ceiling)
    out += ["", "## Misses: what this run's measurements say", ""] + misses(results, ceiling)
    whole = explain.Machine(os.cpu_count() or 1, load, ceiling)
    out += ["", "## Notes", ""]
    out += [f"- {n}" for n in explain.general_notes(results, whole, args.model_mb, args.train_model_mb, ram_gb())]
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
    p.add_argument("--keep", default="/tmp/thunder-bench-results.json",
                   help="where the measurements are kept before the document is written")
    p.add_argument("--render", default="", help="write the document from a --keep file; measure nothing")
    args = p.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    started, t0 = time.time(), time.monotonic()
    load_before = load1()
    code_before = code_state()
    if args.render:  # the measurements of an earlier run (its --keep file), written again
        kept = json.loads(Path(args.render).read_text())
        results, started, seconds, (load_before, load_after), code = (kept["results"], kept["started"], kept["seconds"],
                                                                       kept["load"], kept["code"])
        measured_by = kept.get("argv", [])
        t0 = time.monotonic() - seconds
    else:
        measured_by = None
        results = [run_script(name, kind, args) for name, kind in SCRIPTS if not only or name in only]
        load_after = load1()
        code = describe_code(code_before, code_state())
        fsutil.atomic_write(Path(args.keep), json.dumps({  # a document that fails to render loses no run
            "results": results, "started": started, "seconds": time.monotonic() - t0,
            "load": [load_before, load_after], "code": code, "argv": sys.argv[1:]}) + "\n")
    text = render(results, args, started, time.monotonic() - t0, (load_before, load_after), code, measured_by)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fsutil.atomic_write(Path(args.out), text)  # an interrupted write never leaves half a document
    print(text)
    return 0 if all(not r.get("error") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
