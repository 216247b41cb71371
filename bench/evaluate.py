"""Figure 13 (issue 13): `fab evaluate` decoding rows per second against a bare loop of `mlx_lm.generate` over
the same rows with the same settings (issue 13: >= 0.9x), and the evaluating process's peak RSS.

Both sides load the same base model and the same committed adapters with mlx-lm's own
`load(..., adapter_path=...)`, cast to float32 on a CPU as the lane does, build each prompt with the
tokenizer's chat template (user turn, generation prompt), decode greedily (`make_sampler(temp=0)`)
with the same per-row token limit (2 x reference tokens + 8) and stop at the tokenizer's EOS tokens.
The rate compares decoding only (fab's own decode timing against the bare loop's): interpreter
start, loading and the test loss are outside both, and fab's whole-command time is given in the
details. The lab's model is tiny and random: it rarely stops before its limit, so both sides
decode about the same number of tokens. Runs alternate between fab and bare.
"""
import json
import os
import tempfile

import common as c
from thunderlane import profiles
from thunderlane.evaluate.run import model_dir

PROFILE = "bench_evaluate"
BARE = r"""
import json, os, resource, sys, time
import mlx.core as mx
from mlx_lm import generate, load
from mlx_lm.sample_utils import make_sampler
spec = json.load(open(sys.argv[1]))
model, tok = load(spec["model"], adapter_path=spec["adapters"])
if mx.default_device() == mx.cpu:
    model.set_dtype(mx.float32)
sampler = make_sampler(temp=0.0)
t0 = time.perf_counter()
out = []
for user, ref in spec["rows"]:
    prompt = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, return_dict=False)
    limit = 2 * len(tok.encode(ref, add_special_tokens=False)) + 8
    out.append(generate(model, tok, prompt, max_tokens=limit, sampler=sampler).strip())
seconds = time.perf_counter() - t0
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
print(json.dumps({"seconds": seconds, "corrections": out, "peak_kb": int(status["VmHWM"].split()[0])}))
"""


def prepare(lab, rows):
    """A committed step 5 of the mechanics profile, mirrored home; the bare loop's spec."""
    c.clean_run(lab, PROFILE)
    c.write_profile(lab, PROFILE, PROFILE)
    c.train_window(lab, PROFILE, target=5, window=5)
    mirrored = c.fab(lab, "mirror-back", "--profile", PROFILE, check=True).data
    inv = lab.inv()
    record = json.loads(open(os.path.join(mirrored["local_dir"], "checkpoint.json"), encoding="utf-8").read())
    model = model_dir(inv, profiles.load(PROFILE, lab.profiles), record)  # the snapshot fab evaluate loads
    lines = open(os.path.join(inv.local.dataset_root, "test.jsonl"), encoding="utf-8").read().splitlines()
    chats = [[m["content"] for m in json.loads(line)["messages"]] for line in lines if line.strip()]
    return {"model": model, "adapters": mirrored["local_dir"], "rows": chats[:rows] if rows else chats}


def fab_once(lab, rows):
    args = ["evaluate", "--profile", PROFILE, "--json"] + (["--limit", str(rows)] if rows else [])
    r, peak = c.fab_peak(lab, *args)
    data = json.loads(r.stdout) if r.code == 0 else None
    if data is None:
        raise RuntimeError(f"fab evaluate failed ({r.code}): {r.stderr[-2000:]}")
    return r.seconds, data, peak


def bare_once(lab, spec_path):
    r = c.run([c.PY, "-c", BARE, spec_path], env=lab.env(HF_HUB_OFFLINE="1"), check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = c.parser(__doc__, runs=3, train=True)
    p.add_argument("--rows", type=int, default=0, help="rows of the lab's test split (default 0: all)")
    args = p.parse_args()
    with c.lab_session("train", c.TRAIN_HOSTS, args.train_model_mb) as lab:
        c.set_complete(lab, "mac4")
        spec = prepare(lab, args.rows)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
        try:
            runs = {"fab": [], "bare": []}
            for i in range(args.runs):
                for kind in (("fab", "bare") if i % 2 == 0 else ("bare", "fab")):
                    runs[kind].append(fab_once(lab, args.rows) if kind == "fab" else bare_once(lab, f.name))
                    c.log(f"run {i + 1} {kind} done")
        finally:
            os.unlink(f.name)
        cmd = c.fab_command(lab, "evaluate", "--profile", PROFILE, *(["--limit", str(args.rows)] if args.rows else []))
    n = len(spec["rows"])
    fab_rate = [d["decode"]["rows_per_s"] for _, d, _ in runs["fab"]]
    bare_rate = [n / b["seconds"] for b in runs["bare"]]
    ratio = c.median(fab_rate) / c.median(bare_rate)
    peak = c.median([pk["self_kb"] for _, _, pk in runs["fab"]]) / 1024
    last = runs["fab"][-1][1]
    same = sum(a["correction"] == b for a, b in zip(last["rows"], runs["bare"][-1]["corrections"]))
    figures = [
        c.figure("13a", "fab evaluate decoding rows/s vs a bare mlx_lm.generate loop", round(ratio, 3), ">=", 0.9,
                 runs=args.runs, detail=f"{n} rows; fab {c.rounded(fab_rate)} rows/s (batch {last['decode']['batch']}), "
                 f"bare {c.rounded(bare_rate)} rows/s; fab whole command {c.rounded([s for s, _, _ in runs['fab']], 1)} s "
                 f"(start, load, decode, test loss); {same}/{n} corrections identical to the bare loop's"),
        c.figure("13b", "fab evaluate peak RSS (MB)", round(peak, 1), "<=", 4096, unit="MB", runs=args.runs,
                 goal="recorded (bound 4096 MB)", detail=f"bare loop {c.median([b['peak_kb'] for b in runs['bare']]) / 1024:.1f} MB; "
                 f"verdict on the lab model: {last['verdict']['decision']} (CER {last['metrics']['cer_before']} -> "
                 f"{last['metrics']['cer_after']})"),
    ]
    c.emit("evaluate", {"rows": n, "runs": args.runs, "train_model_mb": args.train_model_mb, "command": cmd}, figures,
           ["The lab's model is tiny and random: the CER figures are poor and say nothing about the real adapter; "
            "the rate compares the same decoding work on both sides."])


if __name__ == "__main__":
    main()
