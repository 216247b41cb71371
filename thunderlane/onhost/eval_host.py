# thunderlane on-host evaluation entry: stdlib + mlx + mlx-lm (bundled last: files, rows, decode, this)
"""``fab evaluate --on HOST``, the host's half, run as ``python -c <bundle> decode SPEC`` or
``... save PATH``.

``decode``: read the host's split (rows.py, as local reads its own), load the base model from the
host's HF cache (offline, at the step's revision) with *copies* of the committed step's adapters
whose sha256 must be checkpoint.json's, decode greedily and measure the test loss (decode.py, the
code local runs). Stdout is JSON lines: ``split`` (path, rows, bad rows), one ``row`` per row (its
place, chat and correction), ``done`` (decode seconds, test loss, peak RSS). Progress goes to
stderr. ``save``: stdin (fab evaluate's result) written to PATH beside the host's checkpoint.json,
atomically. A refusal is one ``error`` line and exit 2; the control side scores nothing here."""
import json
import os
import re
import shutil
import sys
import tempfile
import time

if __package__:  # imported from thunderlane.onhost; in a bundle, the modules before defined these
    from .files import CHECKPOINT, atomic_write, sha256_file
    from .rows import SplitError, load_split
    from .decode import Progress, correct, load_model, peak_rss_mb, test_loss

EVAL_NAME = re.compile(r"eval_step[0-9]+_(test|valid)(_first[0-9]+)?\.json")  # as evaluate/run.py names them
REFUSED = 2
ANSWER = sys.stdout  # the answer's stream (see answer_stream); anything else printing to stdout goes to stderr


class Refused(Exception):
    """The evaluation cannot run here; the message names the file and why."""


def emit(kind, **fields):
    ANSWER.write(json.dumps({"kind": kind, **fields}) + "\n")  # ASCII: whatever the host's locale
    ANSWER.flush()


def private_adapters(run_dir, files):
    """A private folder in mlx-lm's ``adapter_path`` layout holding copies of the run directory's
    files, ``{name in the folder: (name in run_dir, sha256)}``, each copy checked against its
    sha256: a window committing meanwhile cannot change what is loaded. Remove it after loading."""
    folder = tempfile.mkdtemp(prefix="thunder-eval.")
    try:
        for dest, (name, want) in files.items():
            src = os.path.join(run_dir, name)
            try:
                shutil.copyfile(src, os.path.join(folder, dest))
            except OSError as e:
                raise Refused(f"{src}: cannot be read: {e.strerror or e}") from None
            got = sha256_file(os.path.join(folder, dest))
            if got != want:
                raise Refused(f"{src}: sha256 {got[:12]}, checkpoint.json records {str(want)[:12]} "
                              "(changed since the gate checked it)")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def model_path(spec):
    """The base model's snapshot in this host's HF cache at the step's revision, offline."""
    from huggingface_hub import snapshot_download
    repo, revision, cache = spec["model"], spec.get("revision"), spec.get("hf_cache")
    try:
        return snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here is a cache one: say which
        raise Refused(f"cannot find {repo} at revision {str(revision)[:12]} in the HF cache "
                      f"{cache or '(the default)'}: {type(e).__name__}: {e}") from None


def decode_split(spec):
    try:
        data = load_split(spec["split"], spec.get("limit", 0))
    except SplitError as e:
        raise Refused(str(e)) from None
    emit("split", path=data.path, rows=len(data.rows), bad=[list(b) for b in data.bad])
    folder = private_adapters(spec["run_dir"], {
        "adapters.safetensors": (spec["step_file"], spec["step_sha256"]),
        "adapter_config.json": ("adapter_config.json", spec["config_sha256"])})
    try:
        model, tokenizer = load_model(model_path(spec), folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    t0 = time.monotonic()
    corrections = correct(model, tokenizer, data.rows, spec["batch"], Progress(len(data.rows), sys.stderr))
    seconds = time.monotonic() - t0
    for r, c in zip(data.rows, corrections):
        emit("row", where=r.where, messages=list(r.messages), correction=c)
    loss = test_loss(model, tokenizer, [r.messages for r in data.rows], spec["batch_size"],
                     spec["max_seq_length"], spec["mask_prompt"])
    emit("done", seconds=seconds, test_loss=None if loss is None else float(loss), peak_rss_mb=peak_rss_mb())


def save(path, raw):
    """Write the result ``raw`` (JSON bytes) to ``path``: an ``eval_step<N>_<split>.json`` beside a
    checkpoint.json, through a temporary file, fsync and rename (never a partial file there)."""
    folder, name = os.path.split(path)
    if not EVAL_NAME.fullmatch(name) or not os.path.isfile(os.path.join(folder, CHECKPOINT)):
        raise Refused(f"{path}: not an evaluation's name beside a checkpoint.json")
    try:
        result = json.loads(raw.decode("utf-8"))
    except ValueError as e:
        raise Refused(f"{path}: the result sent is not JSON ({e}); nothing written") from None
    text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    try:
        atomic_write(path, write)
    except OSError as e:
        raise Refused(f"{path}: cannot be written: {e.strerror or e}") from None
    emit("saved", path=path, bytes=len(text.encode("utf-8")))


def answer_stream():
    """The answer's own copy of fd 1; fd 1 itself (and ``sys.stdout``) then goes to stderr: a
    library's print, or a C-level write (mlx, Metal), cannot break the answer's lines."""
    global ANSWER
    sys.stdout.flush()
    ANSWER = os.fdopen(os.dup(1), "w", encoding="ascii")
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def main(argv):
    os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: the cache is all there is
    answer_stream()
    try:
        if len(argv) == 2 and argv[0] == "decode":
            decode_split(json.loads(argv[1]))
        elif len(argv) == 2 and argv[0] == "save":
            save(argv[1], sys.stdin.buffer.read())
        else:
            raise Refused("usage: decode SPEC | save PATH")
    except Refused as e:
        emit("error", message=str(e))
        return REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
