"""The profile's ``promotion:`` block and the verdict it gives on a :class:`metrics.Summary`.

    promote  corpus CER ratio (after / before) <= max_cer_ratio, the gain is significant (the
             lower bound of the reduction's bootstrap 95% interval is above 0: the whole interval
             says the adapter lowers CER, equivalently the ratio's upper bound is below 1), and rows made worse <= max_worse_fraction
    reject   the adapter makes the corpus worse: CER after > CER before
    hold     anything between: no significant gain, too small a gain, or too many rows made worse
"""
from dataclasses import dataclass

SPLITS = ("test", "valid")
FIELDS = {"max_cer_ratio", "max_worse_fraction", "on_handoff", "split", "limit"}


class PolicyError(ValueError):
    """A bad ``promotion:`` block; the message names the field."""


@dataclass(frozen=True)
class Promotion:
    max_cer_ratio: float = 0.9        # CER after / before at most this (a 10% relative reduction)
    max_worse_fraction: float = 0.05  # at most this share of rows made worse
    on_handoff: bool = False          # fab handoff evaluates after mirror-back
    split: str = "test"               # the split the handoff evaluates
    limit: int = 0                    # the handoff evaluates this many rows (0: all)


def parse(block, where):
    """A :class:`Promotion` from a profile's ``promotion:`` mapping (None: the defaults)."""
    if block is None:
        return Promotion()
    if not isinstance(block, dict):
        raise PolicyError(f"{where}: promotion: a mapping ({', '.join(sorted(FIELDS))})")
    unknown = sorted(set(block) - FIELDS)
    if unknown:
        raise PolicyError(f"{where}: promotion: unknown field {unknown[0]!r}; known: {', '.join(sorted(FIELDS))}")
    out = Promotion(**block)
    for key in ("max_cer_ratio", "max_worse_fraction"):
        value = getattr(out, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise PolicyError(f"{where}: promotion.{key}: {value!r} is not a number between 0 and 1")
    if not isinstance(out.on_handoff, bool):
        raise PolicyError(f"{where}: promotion.on_handoff: true or false, not {out.on_handoff!r}")
    if out.split not in SPLITS:
        raise PolicyError(f"{where}: promotion.split: {out.split!r} is not one of {', '.join(SPLITS)}")
    if isinstance(out.limit, bool) or not isinstance(out.limit, int) or out.limit < 0:
        raise PolicyError(f"{where}: promotion.limit: {out.limit!r} is not a whole number >= 0")
    return out


@dataclass(frozen=True)
class Verdict:
    decision: str   # promote, hold or reject
    reasons: tuple  # each a sentence with the numbers behind it

    @property
    def ok(self):
        return self.decision == "promote"

    def to_dict(self):
        return {"decision": self.decision, "reasons": list(self.reasons)}


def verdict(summary, promotion):
    """The :class:`Verdict` of ``summary`` under ``promotion``'s thresholds."""
    ratio = summary.cer_ratio
    if ratio is None:
        if summary.edits_after:
            return Verdict("reject", (f"the hypotheses have no error and the corrections add "
                                      f"{summary.edits_after} edits",))
        return Verdict("hold", ("the hypotheses have no error: nothing to correct, nothing measured",))
    if ratio > 1:
        return Verdict("reject", (f"CER rose from {summary.cer_before:.4f} to {summary.cer_after:.4f} "
                                  f"(ratio {ratio:.3f} > 1)",))
    reasons = []
    if ratio > promotion.max_cer_ratio:
        reasons.append(f"CER ratio {ratio:.3f} is above max_cer_ratio {promotion.max_cer_ratio}")
    low = summary.interval[0] if summary.interval else None
    if low is None or low <= 0:
        shown = "none" if low is None else f"[{low:.3f}, {summary.interval[1]:.3f}]"
        reasons.append(f"the gain is not significant: the reduction's 95% interval {shown} does not "
                       "lie above 0")
    if summary.worse_fraction > promotion.max_worse_fraction:
        reasons.append(f"{summary.worse} of {summary.rows} rows made worse ({summary.worse_fraction:.3f}) is "
                       f"above max_worse_fraction {promotion.max_worse_fraction}")
    if reasons:
        return Verdict("hold", tuple(reasons))
    return Verdict("promote", (f"CER {summary.cer_before:.4f} -> {summary.cer_after:.4f} (ratio {ratio:.3f} <= "
                               f"{promotion.max_cer_ratio}), reduction 95% interval [{summary.interval[0]:.3f}, "
                               f"{summary.interval[1]:.3f}] above 0, {summary.worse} of {summary.rows} rows "
                               f"worse (<= {promotion.max_worse_fraction})",))
