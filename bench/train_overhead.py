"""Figure 5: `fab train-window` for a 10-step window against the bare `mlx.launch ... mlx_lm lora`
of the same steps, on the same hosts (mac4 writer, mac5), with the same hyper-parameters
(launchers/profiles/synthetic_mechanics.yaml), the same launch flags and ring port.

The lane computes in float32 on a CPU (lane_train.load_model casts the model: bf16 is emulated on
CPU); bare mlx_lm keeps bf16 and is several times slower here. The figure compares with the bare
run patched to cast to float32 the same way (its losses match the lane's step for step); a bf16
bare run is reported for information. The model is small (--train-model-mb, default 2 MB):
training time is compute, not bytes. Runs alternate between lane and bare; every lane run starts
from an empty run directory. The breakdown is from timestamped progress lines.
"""
import json
import os
import re
import shlex
import shutil
import statistics
from pathlib import Path

import yaml

import common as c
from thunderlane import remote

PROFILE = "bench_overhead"
VAL = re.compile(r"^\s*\d+\s+val\s+[\d.]+\s+([\d.]+)s")  # mlx_lm's "   10    val 7.162    0.96s"
F32 = ("import mlx.core as mx, mlx_lm.lora as L\n_load = L.load\n"
       "def load(*a, **k):\n    model, tok = _load(*a, **k)\n    model.set_dtype(mx.float32)  # as lane_train does on CPU\n"
       "    return model, tok\nL.load = load\nL.main()\n")


def bare_setup(lab, prof):
    """Hostfile, ssh wrapper (same Host blocks the lane writes) and mlx_lm config for the bare run."""
    inv = lab.inv()
    hosts = [inv.host(h) for h in prof["lane"]["hosts"]]
    d = lab.dir / "bare"
    (d / "bin").mkdir(parents=True, exist_ok=True)
    (d / "ssh_config").write_text(remote.ssh_config(inv, hosts))
    (d / "bin" / "ssh").write_text(f"#!/bin/sh\nexec {shutil.which('ssh')} -F {d / 'ssh_config'} \"$@\"\n")
    os.chmod(d / "bin" / "ssh", 0o755)
    (d / "hostfile.json").write_text(json.dumps([{"ssh": h.ssh_name, "ips": [h.data_ip]} for h in hosts]))
    cfg = {k: v for k, v in prof.items() if k != "lane"}
    cfg.update(train=True, data=hosts[0].dataset_root, iters=10, steps_per_report=1,
               adapter_path=str(d / "adapters"))
    (d / "lora.yaml").write_text(yaml.safe_dump(cfg))
    # a host whose inventory names its hf_cache (the lab's mac5) needs HF_HUB_CACHE in its rank's
    # environment, as the lane's ranks set it; mlx.launch's --env is one value for every host, so the
    # bare run's --python is a wrapper that sets it by host (the lab sshd's THUNDER_LAB_HOST)
    cases = "".join(f"  {h.name}) HF_HUB_CACHE={shlex.quote(h.hf_cache)}; export HF_HUB_CACHE ;;\n"
                    for h in hosts if h.hf_cache)
    (d / "python").write_text(f'#!/bin/sh\ncase "$THUNDER_LAB_HOST" in\n{cases}esac\n'
                              f'exec {shlex.quote(hosts[0].python)} "$@"\n')
    os.chmod(d / "python", 0o755)
    launch = [Path(c.PY).parent / "mlx.launch", "--backend", "ring", "--starting-port",
              os.environ["THUNDER_RING_PORT"], "--hostfile", d / "hostfile.json", "--python", d / "python",
              "--env", "HF_HUB_OFFLINE=1", "--env", "PYTHONUNBUFFERED=1", "--env", "TERM=dumb",
              "--env", "TTY_INTERACTIVE=0", "--"]
    env = dict(os.environ, PATH=f"{d / 'bin'}:{os.environ['PATH']}")
    return d, launch, env


def bare(lab, d, launch, env, f32=True):
    shutil.rmtree(d / "adapters", ignore_errors=True)
    entry = ["-c", F32] if f32 else ["-m", "mlx_lm", "lora"]
    seconds, code, lines, _ = c.timed_lines([*launch, *entry, "-c", d / "lora.yaml"], env,
                                            cwd=c.ROOT / "launchers", merge=True)
    if code or not (d / "adapters" / "adapters.safetensors").is_file():
        raise RuntimeError(f"bare mlx_lm lora failed ({code}): " + "\n".join(l for _, l in lines[-20:]))
    loaded = c.first(lines, lambda l: "Trainable parameters" in l)
    trained = c.last(lines, lambda l: "0000010_adapters" in l, lines[-1][0])
    val = sum(float(m.group(1)) for _, l in lines for m in [VAL.match(l)] if m)  # its validations' own times
    return seconds, {"launch+load": loaded, "train": trained - loaded, "val": val, "after": seconds - trained}


def lane(lab):
    c.clean_run(lab, PROFILE)
    seconds, lines, _ = c.train_window(lab, PROFILE)
    w = "[mac4]"
    t = {k: c.first(lines, f) for k, f in (("chunks", lambda l: l.startswith("chunks:")),
                                            ("plan", lambda l: l.startswith("launch: plan in")),
                                            ("resume", lambda l: l.startswith(f"{w} resume")))}
    done = c.last(lines, lambda l: l.startswith(f"{w} done"))
    commit = 0.0
    for step in (5, 10):
        stepped = c.first(lines, lambda l, s=step: l.startswith(f"{w} step {s} "))
        committed = c.first(lines, lambda l, s=step: l.startswith(f"{w} committed step {s} "))
        commit += committed - stepped
    return seconds, {"preflight": t["chunks"], "plan": t["plan"] - t["chunks"],
                     "launch+load": t["resume"] - t["plan"], "train": done - t["resume"] - commit,
                     "commit": commit, "after": seconds - done}


def phase_split(runs, over, fixed, helpers):
    """The split an explanation is computed from (seconds): each kind's phase medians, the named
    overheads (medians over run pairs), the fixed cost, the helper starts' costs and every run."""
    r3 = lambda d: {k: round(v, 3) for k, v in d.items()}  # noqa: E731
    med = lambda kind: {k: c.median([p[k] for _, p in runs[kind]]) for k in runs[kind][0][1]}  # noqa: E731
    return {"lane": r3(med("lane")), "bare": r3(med("bare")), "overhead": r3(over), "fixed": round(fixed, 3),
            "helper_seconds": r3(helpers),
            "runs": {kind: [{"seconds": round(sec, 3), **r3(p)} for sec, p in runs[kind]] for kind in runs}}


def main():
    p = c.parser(__doc__, runs=5, train=True)
    p.add_argument("--bf16-runs", type=int, default=1, help="bare bf16 runs, for information (0: none)")
    p.add_argument("--pairs", type=int, default=0, help="interleaved lane/bare pairs (default: --runs + 2, "
                   "at least 7: single runs spread by a third on a shared machine)")
    args = p.parse_args()
    args.pairs = args.pairs or max(7, args.runs + 2)
    with c.lab_session("train", c.TRAIN_HOSTS, args.train_model_mb) as lab:
        c.set_complete(lab, "mac4")
        prof = c.write_profile(lab, PROFILE, PROFILE)
        d, launch, env = bare_setup(lab, prof)
        bare(lab, d, launch, env)  # warm-up (compiles, page cache)
        runs = {"lane": [], "bare": []}
        for i in range(args.pairs):
            for kind in (("lane", "bare") if i % 2 == 0 else ("bare", "lane")):
                runs[kind].append(lane(lab) if kind == "lane" else bare(lab, d, launch, env))
                c.log(f"run {i + 1} {kind}: {runs[kind][-1][0]:.2f}s {({k: round(v, 2) for k, v in runs[kind][-1][1].items()})}")
        helpers = {cmd: c.median([c.run([c.PY, "-m", "thunderlane.launcher_helpers", cmd, PROFILE], env=lab.env(), check=True).seconds
                                  for _ in range(3)]) for cmd in ("lock-dir", "committed-step")}
        bf16 = [bare(lab, d, launch, env, f32=False)[0] for _ in range(args.bf16_runs)]
        cmd_lane = c.fab_command(lab, "train-window", "--profile", PROFILE, "--target", "10", "--window", "10")
        cmd_bare = " ".join(map(str, [f"PATH={d / 'bin'}:$PATH", *launch, "-c", "<F32 patch of mlx_lm.lora>",
                                      "-c", d / "lora.yaml"]))
    m_lane = c.median([s for s, _ in runs["lane"]])
    m_bare = c.median([s for s, _ in runs["bare"]])
    ratios = [a[0] / b[0] for a, b in zip(runs["lane"], runs["bare"])]  # each pair ran back to back
    value, quart = c.median(ratios), statistics.quantiles(ratios, n=4)
    pairs = [(lp, bp) for (_, lp), (_, bp) in zip(runs["lane"], runs["bare"])]
    comp = lambda f: c.median([f(lp, bp) for lp, bp in pairs])  # noqa: E731  median over run pairs
    over = {"preflight (fab start, preflight probes)": comp(lambda l, b: l["preflight"]),
            "launch (plan-window, then mlx.launch to the first step, minus bare's)":
                comp(lambda l, b: l["plan"] + l["launch+load"] - b["launch+load"]),
            "commit (beyond the validation both runs do)": comp(lambda l, b: l["commit"] - b["val"]),
            "train steps (the same computation: noise)": comp(lambda l, b: l["train"] - (b["train"] - b["val"])),
            "gate (after the last step: teardown, committed step, reap, gate; minus bare's teardown)":
                comp(lambda l, b: l["after"] - b["after"])}
    fixed = comp(lambda l, b: l["preflight"] + l["plan"] + l["commit"] - b["val"] + l["after"] - b["after"])
    breakdown = "; ".join(f"{k} {v:+.2f}s" for k, v in over.items())
    figures = [c.figure("5", "train-window 10 steps vs bare mlx.launch mlx_lm lora (float32)", value, "<=", 1.10,
                        runs=c.rounded(ratios),
                        detail=f"the figure is the median of {len(ratios)} per-pair ratios (lane / bare of each "
                               f"interleaved pair, run back to back, the order alternating pair by pair): the load a "
                               f"pair meets is shared by both sides; pairs spread {min(ratios):.3f} to {max(ratios):.3f}, "
                               f"quartiles {quart[0]:.3f} and {quart[2]:.3f}; the ratio of the two sides' medians is "
                               f"{m_lane / m_bare:.3f}. Median lane {m_lane:.2f}s, bare {m_bare:.2f}s "
                               f"(+{m_lane - m_bare:.2f}s). Where it goes "
                               f"(medians over run pairs): {breakdown}. The lane-only fixed cost (preflight + plan-window "
                               f"+ commit beyond validation + gate) is {fixed:.2f}s, {100 * fixed / m_bare:.0f}% of the bare "
                               f"run: the ratio to expect without noise is about {1 + fixed / m_bare:.2f}. Under fab the chunk runner "
                               f"starts no `python -m thunderlane.launcher_helpers` in a 1-window run (fab takes the window lock "
                               f"for it and hands it over on THUNDER_LOCK_FD, hands it the start step and the first window's "
                               f"plan, and gates the last window itself); a helper start costs {helpers['lock-dir']:.2f}s "
                               f"(lock-dir: imports only), {helpers['committed-step']:.2f}s with a writer probe (committed-step, "
                               f"what each later window's check costs)"
                               + (f"; bare in bf16 (mlx_lm's default on CPU) {c.median(bf16):.1f}s, "
                                  f"ratio against it {m_lane / c.median(bf16):.2f}" if bf16 else ""))]
    ph = lambda kind, k: c.median([p[k] for _, p in runs[kind]])  # noqa: E731
    split = phase_split(runs, over, fixed, helpers)
    # the lane's and the bare run's phase medians (s) for bench/explain.py; the whole split stays in facts
    figures[0].update(of=f"median of {len(ratios)} pairs", phases=split["lane"], baseline_phases=split["bare"],
                      facts={**figures[0].get("facts", {}), "split": split})
    c.emit("train_overhead", vars(args), figures, [
        f"5: model {args.train_model_mb:g} MB; `{cmd_lane}` vs `{cmd_bare}` (cwd launchers/, as the lane's launcher)",
        "5: phases, medians (s): lane " + json.dumps({k: round(ph('lane', k), 2) for k in runs['lane'][0][1]})
        + ", bare " + json.dumps({k: round(ph('bare', k), 2) for k in runs['bare'][0][1]})])


if __name__ == "__main__":
    main()
