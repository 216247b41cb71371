"""Figure 7: resume fidelity. The largest absolute difference between the adapters after N windows
and after one window of the same 10 steps, for N = 2 and 5 (`fab train-window --target 10
--window 5` and `--window 2`), each run from an empty run directory. Both ranks' adapter files are
compared with the one-window writer's. Small model (--train-model-mb): it is compute, not bytes.
"""
import numpy as np

import common as c

STEPS = 10


def run(lab, windows):
    name = f"bench_resume_{windows}w"
    c.write_profile(lab, name, name)
    c.clean_run(lab, name)
    seconds, lines, _ = c.train_window(lab, name, target=STEPS, window=STEPS // windows)
    launched = sum(1 for _, l in lines if l.startswith("launch: plan in"))
    if launched != windows:
        raise RuntimeError(f"{name}: expected {windows} windows, the chunk runner launched {launched}")
    files = {h: lab.dir / h / "thunder-train" / "runs" / name / "adapters.safetensors" for h in lab.hosts}
    c.log(f"{windows} window(s): {seconds:.1f}s")
    return seconds, {h: c.adapters(f) for h, f in files.items()}


def max_diff(a, b):
    if set(a) != set(b):
        raise RuntimeError("adapter files hold different tensors")
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def main():
    args = c.parser(__doc__, train=True).parse_args()
    with c.lab_session("train", c.TRAIN_HOSTS, args.train_model_mb) as lab:
        c.set_complete(lab, "mac4")
        t1, one = run(lab, 1)
        ref = one["mac4"]
        figures, seconds = [], {1: t1}
        for n in (2, 5):
            seconds[n], many = run(lab, n)
            diffs = {h: max_diff(ref, a) for h, a in many.items()}
            figures.append(c.figure(f"7{'ab'[n == 5]}", f"resume: max |adapter diff|, {n} windows vs 1", max(diffs.values()),
                                    "<=", 1e-6, unit="abs", runs=[diffs[h] for h in lab.hosts],
                                    detail=f"per host {diffs}; {n} windows took {seconds[n]:.1f}s, one window "
                                           f"{t1:.1f}s; rank 1 vs the writer in one window: {max_diff(ref, one['mac5'])}"))
        cmd = c.fab_command(lab, "train-window", "--profile", "bench_resume_Nw", "--target", "10", "--window", "10/N")
    c.emit("resume", vars(args), figures, [f"7: model {args.train_model_mb:g} MB; `{cmd}` for N = 1, 2, 5"])


if __name__ == "__main__":
    main()
