"""Figure 6: `fab mirror-back`. File bytes rsync sends / the bytes brought home on a first run (no
local mirror yet; what comes home is checkpoint.json and the files it names), and file bytes sent
on a second run (none: mirror-back hard-links the verified mirror's unchanged files into its
staging folder before rsync looks). The run directory comes from one 10-step window of the small training model.
The issue gives no number for the first run: it is judged against 1.02, as the sync is.
"""
import shutil

import common as c
from thunderlane import lab as labmod

PROFILE = "bench_mirror"


def main():
    args = c.parser(__doc__, train=True).parse_args()
    with c.lab_session("train", c.TRAIN_HOSTS, args.train_model_mb) as lab:
        c.set_complete(lab, "mac4")
        c.write_profile(lab, PROFILE, PROFILE)
        c.clean_run(lab, PROFILE)
        c.train_window(lab, PROFILE)
        first, second, t_first, t_second = [], [], [], []
        for i in range(args.runs):
            shutil.rmtree(lab.dir / "local" / labmod.RUNS_REL / PROFILE, ignore_errors=True)
            for out, times in ((first, t_first), (second, t_second)):
                r = c.fab(lab, "mirror-back", "--profile", PROFILE, check=True)
                out.append(r.data)
                times.append(r.seconds)
            c.log(f"run {i + 1}: first {first[-1]['literal_bytes']} of {first[-1]['run_bytes']} bytes "
                  f"({t_first[-1]:.2f}s), second {second[-1]['literal_bytes']} ({t_second[-1]:.2f}s)")
        cmd = c.fab_command(lab, "mirror-back", "--profile", PROFILE)
    ratios = [d["literal_bytes"] / d["run_bytes"] for d in first]
    figures = [
        c.figure("6a", "mirror-back: bytes sent / run dir bytes, first run", c.median(ratios), "<=", 1.02,
                 goal="<= 1.02 (no number in the issue)", runs=c.rounded(ratios, 5),
                 detail=f"{first[0]['files']} files, {first[0]['run_bytes']} bytes at step {first[0]['step']}; "
                        f"median {c.median(t_first):.2f}s"),
        c.figure("6b", "mirror-back: file bytes sent, second run", max(d["literal_bytes"] for d in second), "==", 0,
                 goal="0 bytes", unit="bytes", runs=[d["literal_bytes"] for d in second],
                 detail=f"median {c.median(t_second):.2f}s"),
    ]
    c.emit("mirror", vars(args), figures, [f"6: model {args.train_model_mb:g} MB; `{cmd}` twice, after removing "
                                           "the local mirror; bytes are rsync's 'Literal data'"])


if __name__ == "__main__":
    main()
