"""Figure 8: peak memory of the `fab` process for each task (it orchestrates; it should not load mlx).

Each task runs once (peak RSS barely moves between runs) under a wrapper that runs fab's own
entry point in-process and records at exit the peak RSS of the fab process
alone (VmHWM), not its children (probes, rsync, mlx.launch). Byte-bound tasks run on the --model-mb lab,
training tasks on the small training lab; lab-up/lab-down run on a fresh throwaway lab folder (the
wrapper points thunderlane.lab at it, so `.lab/` is never touched) with fab lab-up's own default
model size. Where mlx is loaded, the import chain is measured too.
"""
import shutil

import common as c


def measure(lab, rows, label, *args, lab_dir=None, expect_ok=True):
    r, peak = c.fab_peak(lab, *args, lab_dir=lab_dir)
    if expect_ok and r.code:
        raise RuntimeError(f"fab {' '.join(args)} exited {r.code}: {r.stdout[-600:]} {r.stderr[-600:]}")
    rows.append({"task": label, "mb": peak["self_kb"] / 1024, "mlx": peak["mlx_loaded"], "code": r.code,
                 "seconds": r.seconds})
    c.log(f"{label}: fab {rows[-1]['mb']:.0f} MB, "
          f"mlx {'loaded' if peak['mlx_loaded'] else 'not loaded'}, exit {r.code}, {r.seconds:.1f}s")


def import_chain():
    """RSS after importing fabfile, then after also importing what lab-up imports (the fixtures),
    and the top-level packages that second import brings in."""
    code = ("import re, sys\n"
            "rss = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024\n"
            "import fabfile; a = rss(); before = set(sys.modules)\n"
            "from thunderlane.lab.fixtures import model; b = rss()\n"
            "new = sorted({m.split('.')[0] for m in set(sys.modules) - before} - {'thunderlane'} - sys.stdlib_module_names)\n"
            "print(a, b, ','.join(n for n in new if not n.startswith('_')))")
    a, b, new = c.run([c.PY, "-c", code], check=True).stdout.split()
    return int(a), int(b), new.split(",")


def seed_partial_growth(lab):
    """VmHWM growth of a process that runs thunderlane.lab.seed_partial on the lab's model (what
    lab-up does for the first host), in MB, and the size of the partial blob it writes."""
    code = ("import re, sys, tempfile, pathlib\n"
            "hwm = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024\n"
            "import fabfile; from thunderlane import lab; a = hwm()\n"
            "with tempfile.TemporaryDirectory(dir=sys.argv[2]) as d:\n"
            "    lab.seed_partial(pathlib.Path(sys.argv[1]), pathlib.Path(d))\n"
            "    inc = sum(p.stat().st_size for p in pathlib.Path(d).rglob('*.incomplete'))\n"
            "print(hwm() - a, inc // 2**20)")
    grew, inc = c.run([c.PY, "-c", code, lab.repo("local"), lab.dir], check=True).stdout.split()
    return int(grew), int(inc)


def main():
    p = c.parser(__doc__, runs=1)
    p.add_argument("--train-model-mb", type=float, default=c.DEFAULT_TRAIN_MODEL_MB)
    args = p.parse_args()
    rows = []
    with c.lab_session("bytes", c.BYTE_HOSTS, args.model_mb) as lab:
        c.write_profile(lab, "bench_memory", "bench_memory")
        c.set_partial(lab, "mac4")
        measure(lab, rows, "verify-dataset", "verify-dataset", "--json")
        measure(lab, rows, "verify-cache (mac4 partial)", "verify-cache", "--json", expect_ok=False)
        measure(lab, rows, "sync-cache --host mac4", "sync-cache", "--host", "mac4", "--json")
        measure(lab, rows, "verify-cache", "verify-cache", "--json")
        measure(lab, rows, "verify-cache --deep", "verify-cache", "--deep", "--json")
        measure(lab, rows, "status", "status", "--profile", "bench_memory", "--json", expect_ok=False)
        grew, incomplete = seed_partial_growth(lab)
    with c.lab_session("train", c.TRAIN_HOSTS, args.train_model_mb) as lab:
        c.set_complete(lab, "mac4")
        for name in ("bench_memory", "bench_memory_handoff"):
            c.write_profile(lab, name, name)
            c.clean_run(lab, name)
        measure(lab, rows, "train-window", "train-window", "--profile", "bench_memory", "--json")
        measure(lab, rows, "mirror-back", "mirror-back", "--profile", "bench_memory", "--json")
        c.set_partial(lab, "mac4")
        measure(lab, rows, "handoff (mac4 partial: sync, train, mirror)", "handoff", "--profile",
                "bench_memory_handoff", "--json")
    for size in (2.0, args.model_mb):  # fab lab-up's default size, and the byte-bound one
        fresh = c.BENCH_ROOT / "memory-lab-up"
        shutil.rmtree(fresh, ignore_errors=True)
        try:
            measure(lab, rows, f"lab-up --model-mb {size:g} (fresh lab: builds fixtures)", "lab-up", "--hosts",
                    "mac4,mac5", "--model-mb", str(size), lab_dir=fresh)
        finally:
            measure(lab, rows, f"lab-down (after lab-up --model-mb {size:g})", "lab-down", lab_dir=fresh)
            shutil.rmtree(fresh, ignore_errors=True)
    base, with_fixtures, chain = import_chain()
    figures = [c.figure(f"8{chr(ord('a') + i)}", f"peak RSS of fab: {r['task']}", round(r["mb"], 1), "<=", 150,
                        unit="MB", detail=f"{r['seconds']:.1f}s; mlx "
                                          f"{'LOADED: ' + ', '.join(r['mlx']) if r['mlx'] else 'not loaded'}; exit {r['code']}")
               for i, r in enumerate(rows)]
    c.emit("memory", vars(args), figures, [
        "8: lab-up/lab-down ran through the same wrapper with thunderlane.lab.up/down/status pointed at a "
        "throwaway folder (fab lab-up has no flag for the lab folder)",
        f"8: `import fabfile` alone peaks at {base} MB without mlx. "
        + ("lab-up loaded mlx in the fab process: fabfile.lab_up -> thunderlane.lab.up -> seed -> fixtures() -> "
           "`from .fixtures.model import build_model_cache` -> thunderlane/fixtures/model.py's top-level imports"
           if any(r["mlx"] for r in rows if r["task"].startswith("lab-up")) else
           "No task loaded mlx in the fab process (thunderlane.lab.fixtures builds the model in a child "
           "process); importing thunderlane/fixtures/model.py there would")
        + f" bring in {', '.join(chain)} ({with_fixtures} MB after the import alone, before building anything)",
        f"8: lab-up's own growth without mlx: thunderlane.lab.seed_partial on the {args.model_mb:g} MB model "
        f"raises a process's peak RSS by {grew} MB while it copies the kept head of a shard ({incomplete} MiB, "
        "the '.incomplete' blob) in 1 MiB chunks"])


if __name__ == "__main__":
    main()
