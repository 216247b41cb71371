"""The handoff's situation in the lab, from fixtures generated here (deterministic, offline): the
corpus everywhere, the complete model cache on local and on every host but the first, which gets
what an interrupted download leaves."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..fsutil import atomic_write

DATASET_REL = "thunder-train/data/gemma4_e2b_nko_correction_partial_real"
RUNS_REL = "thunder-train/runs"
CACHE_REL = ".cache/huggingface/hub"


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


def seed(p, names, model_mb, reseed=False):
    """The handoff's situation: corpus everywhere, full cache on local and all hosts but the
    first, a partial cache on the first (configs and tokenizer, no shards, an .incomplete blob)."""
    lab = p["lab"]
    marker = lab / ".seeded"
    wanted = f"{','.join(names)} {model_mb:g}"
    if not reseed and marker.exists() and marker.read_text() == wanted:
        return
    corpus, repo = build_fixtures(p, model_mb)
    for i, home in enumerate([lab / "local", *(lab / n for n in names)]):
        _copy_tree(corpus, home / DATASET_REL)
        cache = home / CACHE_REL
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(home / RUNS_REL, ignore_errors=True)
        if i == 1:
            seed_partial(repo, cache)
        else:
            _copy_tree(repo, cache / repo.name)
    marker.write_text(wanted)


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
