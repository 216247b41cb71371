"""Figure 3: `fab verify-cache --deep` hashing throughput against `sha256sum` on the same blobs.

`fab verify-cache --deep --hosts mac5` re-hashes local's and mac5's blobs (two probes, in
parallel). Its hashing time is its wall time minus the fast check's (same hosts, same lab), so
ssh, interpreter start and fab's own start-up are not counted as hashing. The baseline hashes the
same two sets of blob files with `sha256sum`, one process per host, also in parallel. Both read
from the page cache (the blobs are read once before timing). `openssl dgst -sha256` is reported
too: it is the same SHA-256 code Python's hashlib uses.
3-shared: the same with local's and mac5's caches in huggingface_hub 2.x's shared layout (the
blobs hashed are the store entries the repo's blobs link to; ``layouts.py``).
"""
import os
import subprocess
import time

import common as c
import layouts


def parallel(argvs):
    t0 = time.perf_counter()
    procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL) for a in argvs]
    if any(p.wait() for p in procs):
        raise RuntimeError(f"{argvs[0][0]} failed")
    return time.perf_counter() - t0


def measure(lab, runs, blob_sets, inventory_path=None):
    """{kind: [seconds per run]} for deep, fast, sha256sum and openssl, the order alternating."""
    parallel([["cat", *s] for s in blob_sets])  # into the page cache
    t = {"deep": [], "fast": [], "sha256sum": [], "openssl": []}
    for i in range(runs):
        for kind in (["deep", "fast", "sha256sum", "openssl"] if i % 2 == 0 else
                     ["sha256sum", "openssl", "fast", "deep"]):
            if kind in ("deep", "fast"):
                r = c.fab(lab, "verify-cache", "--hosts", "mac5", *(["--deep"] if kind == "deep" else []),
                          inventory_path=inventory_path)
                if r.code or not r.data["ok"]:
                    raise RuntimeError(r.stdout[-800:] + r.stderr[-800:])
                t[kind].append(r.seconds)
            else:
                tool = ["sha256sum"] if kind == "sha256sum" else ["openssl", "dgst", "-sha256"]
                t[kind].append(parallel([[*tool, *s] for s in blob_sets]))
        c.log(f"run {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in t.items()))
    return t


def figure(fid, name, t, nbytes):
    m = {k: c.median(v) for k, v in t.items()}
    hashing = max(m["deep"] - m["fast"], 1e-6)
    mbps = lambda s: nbytes / s / 1e6  # noqa: E731
    return c.figure(
        fid, name, m["sha256sum"] / hashing, ">=", 0.8,
        runs=c.rounded([s / max(d - f, 1e-6) for s, d, f in zip(t["sha256sum"], t["deep"], t["fast"])]),
        detail=f"{nbytes / 1e6:.0f} MB hashed (local + mac5): deep {m['deep']:.2f}s - fast {m['fast']:.2f}s = "
               f"{hashing:.2f}s ({mbps(hashing):.0f} MB/s); sha256sum {m['sha256sum']:.2f}s ({mbps(m['sha256sum']):.0f} MB/s); "
               f"end to end (whole fab run vs sha256sum) {m['sha256sum'] / m['deep']:.2f}; against openssl dgst "
               f"({m['openssl']:.2f}s, {mbps(m['openssl']):.0f} MB/s) {m['openssl'] / hashing:.2f}")


def main():
    args = c.parser(__doc__, runs=5).parse_args()
    with c.lab_session("bytes", c.BYTE_HOSTS, args.model_mb) as lab:
        blob_sets = [sorted(str(p) for p in (lab.repo(h) / "blobs").iterdir()) for h in ("local", "mac5")]
        nbytes = sum(os.path.getsize(b) for s in blob_sets for b in s)
        t = measure(lab, args.runs, blob_sets)
        command = c.fab_command(lab, "verify-cache", "--deep", "--hosts", "mac5")
        shared_inv, caches = layouts.shared_inventory(lab, ["mac5"], name="hosts-shared-deep.yaml")
        shared_sets = [layouts.store_files(caches[h]) for h in ("local", "mac5")]
        t_shared = measure(lab, args.runs, shared_sets, shared_inv)
        shared_command = c.fab_command(lab, "verify-cache", "--deep", "--hosts", "mac5", inventory_path=shared_inv)
    figures = [figure("3", "verify-cache --deep: hashing throughput vs sha256sum", t, nbytes),
               figure("3-shared", "verify-cache --deep (shared layout): hashing throughput vs sha256sum", t_shared,
                      sum(os.path.getsize(b) for s in shared_sets for b in s))]
    c.emit("verify_deep", vars(args), figures, [
        f"3: `{command}` (minus the same without --deep) vs `sha256sum <local blobs>` & `sha256sum <mac5 blobs>`; "
        "this machine's coreutils sha256sum does not use the CPU's SHA extensions, OpenSSL (hashlib) does, "
        "which is why the ratio is far above 1",
        f"3-shared: `{shared_command}` vs `sha256sum` of the store entries local's and mac5's blobs link to"])


if __name__ == "__main__":
    main()
