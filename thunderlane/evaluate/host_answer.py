"""What a host's half of ``fab evaluate --on HOST`` printed (``onhost/eval_host.py``), read into
the values local's scoring takes: the host's split (rows and bad rows, each ``host:file:line``),
the corrections, the decoding's seconds, test loss and peak RSS. Pure: no ssh, no mlx."""
import json
from dataclasses import dataclass

from . import rows as rows_mod
from .run import EvaluateError

NO_INTERPRETER = 127
REFUSED = 2  # the bundle's refusal: one ``error`` line (onhost/eval_host.py)


class HostAnswerError(EvaluateError):
    """The host refused, failed, or answered something that is not the evaluation's answer; the
    message names the host (and the answer's line)."""


@dataclass(frozen=True)
class HostAnswer:
    split: rows_mod.Split  # the host's rows; ``where`` and bad rows as ``host:file:line``
    corrections: tuple     # one per row, in the split's order
    seconds: float         # decoding only, as the host measured it
    test_loss: float | None
    peak_rss_mb: float | None


def lines(host, stdout):
    """The answer's JSON objects, in order; a line that is not one is the host's error."""
    out = []
    for number, line in enumerate(stdout.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            raise HostAnswerError(f"{host}: answer line {number} is not JSON: {line[:200]!r}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
            raise HostAnswerError(f"{host}: answer line {number} is not an evaluation message: {line[:200]!r}")
        out.append(doc)
    return out


def failure(host, code, stdout, stderr):
    """The error of a run that exited with ``code`` != 0: the bundle's refusal (its last ``error``
    line), else the exit code and stderr's tail, looked at before stdout is parsed (a run killed
    mid-line, or a crash, leaves stdout cut or not JSON). None for exit 0."""
    if code == 0:
        return None
    if code == REFUSED:
        refusals = []
        for line in stdout.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("kind") == "error":
                refusals.append(str(doc.get("message")))
        if refusals:
            return HostAnswerError(f"{host}: {refusals[-1]}")
    if code == NO_INTERPRETER:
        return HostAnswerError(f"{host}: no interpreter (exit 127): {_tail(stderr)}")
    return HostAnswerError(f"{host}: the evaluation failed with exit {code}: {_tail(stderr)}")


def _tail(stderr):
    return ((stderr or "").strip().splitlines() or ["no output"])[-1][:300]


def parse(host, code, stdout, stderr):
    """The :class:`HostAnswer` in ``stdout`` of a run that exited with ``code``."""
    problem = failure(host, code, stdout, stderr)
    if problem:
        raise problem
    docs = lines(host, stdout)
    kinds = [d["kind"] for d in docs]
    if kinds[:1] != ["split"] or kinds[-1:] != ["done"] or set(kinds[1:-1]) - {"row"}:
        raise HostAnswerError(f"{host}: the answer is not split, rows, done: {kinds[:3]}...{kinds[-2:]}")
    try:
        return _answer(host, docs)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise HostAnswerError(f"{host}: the answer is malformed: {type(e).__name__}: {str(e)[:200]}") from None


def _answer(host, docs):
    head, rows, done = docs[0], docs[1:-1], docs[-1]
    if len(rows) != head["rows"]:
        raise HostAnswerError(f"{host}: the answer announced {head['rows']} rows and sent {len(rows)}")
    chats = []
    for r in rows:
        messages = tuple(dict(role=str(t["role"]), content=str(t["content"])) for t in r["messages"])
        why = rows_mod.problem({"messages": [dict(t) for t in messages]})
        if why:
            raise ValueError(f"row {r['where']}: {why}")
        chats.append(rows_mod.Row(f"{host}:{r['where']}", messages))
    bad = tuple((f"{host}:{where}", str(reason)) for where, reason in head["bad"])
    split = rows_mod.Split(f"{host}:{head['path']}", tuple(chats), bad, rows_mod.instruction([c.user for c in chats]))
    loss, rss = done.get("test_loss"), done.get("peak_rss_mb")
    if rss is not None and (isinstance(rss, bool) or not isinstance(rss, (int, float))):
        raise ValueError(f"peak_rss_mb is {rss!r}, not a number")
    return HostAnswer(split, tuple(str(r["correction"]) for r in rows), float(done["seconds"]),
                      None if loss is None else float(loss), None if rss is None else float(rss))


def saved(host, code, stdout, stderr):
    """The path the host's ``save`` wrote, from its answer."""
    problem = failure(host, code, stdout, stderr)
    if problem:
        raise problem
    docs = lines(host, stdout)
    paths = [d.get("path") for d in docs if d["kind"] == "saved"]
    if len(paths) != 1 or not isinstance(paths[0], str):
        raise HostAnswerError(f"{host}: the save answered no path: {stdout[:200]!r}")
    return paths[0]
