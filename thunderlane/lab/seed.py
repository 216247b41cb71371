"""The handoff's situation in the lab, from fixtures generated here (deterministic, offline): the
corpus everywhere, the complete model cache on local and on every host but the first, which gets
what a real interrupted download leaves (the caches come from huggingface_hub's own client,
``client.py``). ``seed_partial`` is the older hand-made imitation, kept for the benchmarks and for
fault cases that need that exact state; the lab itself no longer uses it."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..fsutil import atomic_write
from . import client

DATASET_REL = "thunder-train/data/gemma4_e2b_nko_correction_partial_real"
RUNS_REL = "thunder-train/runs"
CACHE_REL = client.CACHE_REL
SEEDED = "seeded.json"
# Hosts whose inventory names an hf_cache away from the default (an external volume, as on a real
# Mac): the cache is seeded there and the default path stays empty, so only a rank that was given
# HF_HUB_CACHE finds the model. Relative to the host's home.
HOST_CACHE_REL = {"mac5": "Volumes/ext/hf"}


def cache_rel(host):
    """Where a lab host's hub cache lives, relative to its home."""
    return HOST_CACHE_REL.get(host, CACHE_REL)


class LabError(RuntimeError):
    pass


def run_tool(argv):
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode:
        raise LabError(f"{argv[0]} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def build_fixtures(p, model_mb):
    """Build the corpus and the model cache once under .lab/fixtures (deterministic, offline).
    The model is built in a child process, so that `fab` itself never loads mlx."""
    from .fixtures.corpus import build_corpus, corpus_texts
    corpus = p["fixtures"] / "corpus"
    if not (corpus / "manifest.json").exists():
        build_corpus(corpus)
    texts = p["fixtures"] / "texts.txt"
    atomic_write(texts, "\n".join(corpus_texts(corpus)) + "\n")
    hub = p["fixtures"] / f"hub-{model_mb:g}mb"
    out = run_tool([sys.executable, "-m", "thunderlane.lab.fixtures.model", "--cache-root", str(hub),
                "--texts-file", str(texts), "--size-mb", str(model_mb)])
    return corpus, Path(json.loads(out)["repo_dir"])


def seed(p, names, model_mb, reseed=False, layouts=None, python=sys.executable):
    """The handoff's situation: corpus everywhere, a complete cache on local and on every host but
    the first, which gets what a real interrupted download leaves; every cache made by
    huggingface_hub's own client (``client.py``) in the host's layout (``layouts``: {host: layout},
    classic where not given). Remembered in ``.lab/seeded.json`` (``seeded()``)."""
    lab = p["lab"]
    homes = {"local": lab / "local", **{n: lab / n for n in names}}
    layouts = {h: (layouts or {}).get(h, "classic") for h in homes}
    wanted = {"hosts": list(names), "model_mb": model_mb, "layouts": layouts,
              "partial": names[0] if names else None, "caches": {h: cache_rel(h) for h in homes}}
    if not reseed and seeded(lab) == wanted:
        return
    corpus, repo = build_fixtures(p, model_mb)
    made = {}
    for host, home in homes.items():
        _copy_tree(corpus, home / DATASET_REL)
        shutil.rmtree(home / RUNS_REL, ignore_errors=True)
        key = (layouts[host], "partial" if host == wanted["partial"] else "complete")
        try:
            made[key] = made.get(key) or client.made(p["fixtures"], repo, python, *key)
        except client.ClientError as e:
            raise LabError(f"seeding {host}: {e}") from None
        if cache_rel(host) != CACHE_REL:
            shutil.rmtree(home / CACHE_REL, ignore_errors=True)  # nothing at the default path
        client.place(made[key], home / cache_rel(host))
    atomic_write(lab / SEEDED, json.dumps(wanted, indent=1) + "\n")


def seeded(lab):
    """What the last seed left: {"hosts", "model_mb", "layouts": {host: layout}, "partial": host}."""
    try:
        return json.loads((Path(lab) / SEEDED).read_text())
    except (OSError, ValueError):
        return None


def _copy_tree(src, dst):
    shutil.rmtree(dst, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, symlinks=True)
    shutil.copystat(src, dst)


def seed_partial(repo, cache, fraction=0.1):
    """A cache as an interrupted download leaves it: every file but the weight shards, one shard's
    bytes cut short as ``<sha256>.incomplete`` (about ``fraction`` of the total), and a lock."""
    dst = cache / repo.name
    _copy_tree(repo, dst)
    rev = (dst / "refs" / "main").read_text().strip()
    snap = dst / "snapshots" / rev
    shards = sorted(f for f in snap.iterdir() if f.name.endswith(".safetensors"))
    total = sum(os.path.getsize(f) for f in snap.iterdir())
    first_blob = None
    for link in shards:
        blob = dst / "blobs" / os.readlink(link).split("/")[-1]
        first_blob = first_blob or blob
        link.unlink()
        if blob != first_blob:
            blob.unlink()
    present = sum(os.path.getsize(f) for f in snap.iterdir())
    keep = max(1, int(total * fraction) - present)
    partial = first_blob.parent / (first_blob.name + ".incomplete")
    with open(first_blob, "rb") as src, open(partial, "wb") as dst_file:
        while keep > 0:  # in chunks: a 1 GB model must not be read into memory
            block = src.read(min(keep, 1 << 20))
            dst_file.write(block)
            keep -= len(block)
    first_blob.unlink()
    locks = cache / ".locks" / repo.name
    locks.mkdir(parents=True, exist_ok=True)
    lock = locks / (first_blob.name + ".lock")
    lock.touch()
    old = time.time() - 3600
    os.utime(lock, (old, old))
