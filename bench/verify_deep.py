"""Figure 3: `fab verify-cache --deep` hashing throughput against `sha256sum` on the same blobs.

`fab verify-cache --deep --hosts mac5` re-hashes local's and mac5's blobs (two probes, in
parallel). Its hashing time is its wall time minus the fast check's (same hosts, same lab), so
ssh, interpreter start and fab's own start-up are not counted as hashing. The baseline hashes the
same two sets of blob files with `sha256sum`, one process per host, also in parallel. Both read
from the page cache (the blobs are read once before timing). `openssl dgst -sha256` is reported
too: it is the same SHA-256 code Python's hashlib uses.
"""
import subprocess
import time

import common as c


def parallel(argvs):
    t0 = time.perf_counter()
    procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL) for a in argvs]
    if any(p.wait() for p in procs):
        raise RuntimeError(f"{argvs[0][0]} failed")
    return time.perf_counter() - t0


def main():
    args = c.parser(__doc__, runs=5).parse_args()
    with c.lab_session("bytes", c.BYTE_HOSTS, args.model_mb) as lab:
        blob_sets = [sorted(str(p) for p in (lab.repo(h) / "blobs").iterdir()) for h in ("local", "mac5")]
        nbytes = sum((lab.repo(h) / "blobs" / b).stat().st_size
                     for h in ("local", "mac5") for b in (lab.repo(h) / "blobs").iterdir())
        parallel([["cat", *s] for s in blob_sets])  # into the page cache
        t = {"deep": [], "fast": [], "sha256sum": [], "openssl": []}
        for i in range(args.runs):
            for kind in (["deep", "fast", "sha256sum", "openssl"] if i % 2 == 0 else
                         ["sha256sum", "openssl", "fast", "deep"]):
                if kind in ("deep", "fast"):
                    r = c.fab(lab, "verify-cache", "--hosts", "mac5", *(["--deep"] if kind == "deep" else []))
                    if r.code or not r.data["ok"]:
                        raise RuntimeError(r.stdout[-800:] + r.stderr[-800:])
                    t[kind].append(r.seconds)
                else:
                    tool = ["sha256sum"] if kind == "sha256sum" else ["openssl", "dgst", "-sha256"]
                    t[kind].append(parallel([[*tool, *s] for s in blob_sets]))
            c.log(f"run {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in t.items()))
        command = c.fab_command(lab, "verify-cache", "--deep", "--hosts", "mac5")
    m = {k: c.median(v) for k, v in t.items()}
    hashing = max(m["deep"] - m["fast"], 1e-6)
    mbps = lambda s: nbytes / s / 1e6  # noqa: E731
    figures = [c.figure(
        "3", "verify-cache --deep: hashing throughput vs sha256sum", m["sha256sum"] / hashing, ">=", 0.8,
        runs=c.rounded([s / max(d - f, 1e-6) for s, d, f in zip(t["sha256sum"], t["deep"], t["fast"])]),
        detail=f"{nbytes / 1e6:.0f} MB hashed (local + mac5): deep {m['deep']:.2f}s - fast {m['fast']:.2f}s = "
               f"{hashing:.2f}s ({mbps(hashing):.0f} MB/s); sha256sum {m['sha256sum']:.2f}s ({mbps(m['sha256sum']):.0f} MB/s); "
               f"end to end (whole fab run vs sha256sum) {m['sha256sum'] / m['deep']:.2f}; against openssl dgst "
               f"({m['openssl']:.2f}s, {mbps(m['openssl']):.0f} MB/s) {m['openssl'] / hashing:.2f}")]
    c.emit("verify_deep", vars(args), figures, [
        f"3: `{command}` (minus the same without --deep) vs `sha256sum <local blobs>` & `sha256sum <mac5 blobs>`; "
        "this machine's coreutils sha256sum does not use the CPU's SHA extensions, OpenSSL (hashlib) does, "
        "which is why the ratio is far above 1"])


if __name__ == "__main__":
    main()
