"""Per-host results and how they are shown: a table for people, JSON for machines."""
import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class HostResult:
    """One host's verdict on one check. ``ok`` decides the exit code; ``figures`` back the verdict."""
    host: str
    verdict: str
    ok: bool
    detail: str = ""
    figures: dict = field(default_factory=dict)

    def to_dict(self):
        return asdict(self)


@dataclass(frozen=True)
class Report:
    """The results of one task over all hosts, plus task-wide notes."""
    task: str
    results: tuple
    notes: tuple = ()

    @property
    def ok(self):
        return all(r.ok for r in self.results)

    @property
    def failed(self):
        return [r.host for r in self.results if not r.ok]

    def to_json(self):
        return json.dumps({"task": self.task, "ok": self.ok, "failed": self.failed,
                           "results": [r.to_dict() for r in self.results],
                           "notes": list(self.notes)}, indent=2, sort_keys=True)

    def to_table(self, columns):
        """A plain-text table: host, verdict, the figures named in ``columns``, then the detail."""
        head = ["host", "verdict", *columns, "detail"]
        rows = [[r.host, r.verdict, *(_cell(r.figures.get(c)) for c in columns), printable(r.detail)]
                for r in self.results]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        widths[-1] = 0
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
                 for row in [head, *rows]]
        lines.insert(1, "  ".join("-" * max(w, len(h)) for w, h in zip(widths, head)).rstrip())
        verdict = "OK" if self.ok else f"FAILED on {', '.join(self.failed)}"
        return "\n".join([*lines, *map(printable, self.notes), f"{self.task}: {verdict}"])


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return printable(str(value))


def printable(text):
    """Text that came from a host, safe for a terminal or a report: control characters (escape
    sequences, newlines, a carriage return that would overwrite the line) are shown escaped;
    everything printable, N'Ko and paths with their underscores included, stays as written."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def human_bytes(n):
    """1536 -> '1.5 KiB'."""
    if n is None:
        return "-"
    step = 1024.0
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < step or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= step
