# thunderlane on-host evaluation: stdlib only (bundled into the evaluation program, imported by the control side)
"""A split's rows as the evaluation reads them: two-turn user/assistant chats (mlx-lm's chat
format). Every other row is counted and named by ``file:line``, never skipped silently.

The hypothesis is the user turn without its instruction: the instruction is the longest prefix
ending in a line break that every user turn of the split shares (the lab corpus's
"Correct the N'Ko ASR hypothesis:\\n"); a split whose user turns share none is taken whole."""
import json
import os
from dataclasses import dataclass


class SplitError(ValueError):
    """The split cannot be evaluated: missing, empty, or without a single usable row."""


@dataclass(frozen=True)
class Row:
    where: str       # file:line
    messages: tuple  # the chat, as mlx-lm's ChatDataset takes it (user, assistant)

    @property
    def user(self):
        return self.messages[0]["content"]

    @property
    def reference(self):
        return self.messages[1]["content"]


@dataclass(frozen=True)
class Split:
    path: str
    rows: tuple           # Row
    bad: tuple            # (file:line, reason)
    instruction: str      # the shared prefix cut from each user turn

    def hypothesis(self, row):
        return row.user[len(self.instruction):]


def problem(row):
    """Why ``row`` (parsed JSON) is not a two-turn user/assistant chat; None when it is one."""
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list):
        return "no 'messages' list"
    if len(messages) != 2:
        return f"{len(messages)} turns, not 2 (user, assistant)"
    for turn, role in zip(messages, ("user", "assistant")):
        if not isinstance(turn, dict) or turn.get("role") != role:
            return f"turns must be user then assistant, got {[t.get('role') if isinstance(t, dict) else t for t in messages]}"
        if not isinstance(turn.get("content"), str) or not turn["content"].strip():
            return f"the {role} turn has no text"
    return None


def parse(text, name):
    """(rows, bad) of a JSON-lines text called ``name`` (shown in ``file:line``)."""
    rows, bad = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            if number < text.count("\n") + 1:  # the newline ending the file makes no row
                bad.append((f"{name}:{number}", "empty line"))
            continue
        try:
            data = json.loads(line)
        except ValueError as e:
            bad.append((f"{name}:{number}", f"not JSON: {e}"))
            continue
        why = problem(data)
        if why:
            bad.append((f"{name}:{number}", why))
        else:
            rows.append(Row(f"{name}:{number}", tuple(dict(role=t["role"], content=t["content"])
                                                     for t in data["messages"])))
    return rows, bad


def instruction(users):
    """The longest prefix ending in a line break shared by every text of ``users``."""
    if not users:
        return ""
    common = os.path.commonprefix(list(users))
    cut = common.rfind("\n")
    return common[:cut + 1] if cut >= 0 else ""


def load_split(path, limit=0):
    """The :class:`Split` at ``path``; ``limit`` > 0 keeps the first ``limit`` good rows. An absent
    file, an empty one, or one without a good row is a :class:`SplitError`."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise SplitError(f"{path}: the split does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SplitError(f"{path}: cannot be read: {e}") from None
    rows, bad = parse(text, path)
    if not rows and not bad:
        raise SplitError(f"{path}: the split is empty: nothing to evaluate")
    if not rows:
        raise SplitError(f"{path}: no two-turn user/assistant row among {len(bad)} "
                         f"(first: {bad[0][0]}: {bad[0][1]})")
    if limit:
        rows = rows[:limit]
    return Split(str(path), tuple(rows), tuple(bad), instruction([r.user for r in rows]))
