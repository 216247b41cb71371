"""Character error rates of ASR hypotheses and of the adapter's corrections, against references.

Text is NFC-normalised first; edit distance is rapidfuzz's Levenshtein over code points, so an N'Ko
tone mark (a combining character) dropped or added is one edit, as the corpus's errors are. Corpus
CER is total edits over total reference characters, not a mean of row CERs."""
import unicodedata
from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import Levenshtein

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CHUNK = 100  # resamples drawn at once: bounded memory on a large split


def nfc(text):
    return unicodedata.normalize("NFC", text)


def edits(hypothesis, reference):
    """Levenshtein edits (insertions, deletions, substitutions of code points) after NFC."""
    return Levenshtein.distance(nfc(hypothesis), nfc(reference))


class _Rates:
    """CER before and after from edits and reference characters (a row's, or the corpus's)."""

    @property
    def cer_before(self):
        return self.edits_before / max(self.ref_chars, 1)

    @property
    def cer_after(self):
        return self.edits_after / max(self.ref_chars, 1)


@dataclass(frozen=True)
class RowScore(_Rates):
    """One row: where it came from, the three texts, and the edits of each text against the reference."""
    where: str            # file:line
    hypothesis: str
    correction: str
    reference: str
    edits_before: int
    edits_after: int
    ref_chars: int

    @property
    def exact(self):
        return nfc(self.correction) == nfc(self.reference)

    @property
    def change(self):
        """'better', 'same' or 'worse': the correction's edits against the hypothesis's."""
        if self.edits_after < self.edits_before:
            return "better"
        return "same" if self.edits_after == self.edits_before else "worse"

    def to_dict(self):
        return {"where": self.where, "hypothesis": self.hypothesis, "correction": self.correction,
                "reference": self.reference, "edits_before": self.edits_before, "edits_after": self.edits_after,
                "ref_chars": self.ref_chars, "cer_before": round(self.cer_before, 6),
                "cer_after": round(self.cer_after, 6), "exact": self.exact, "change": self.change}


def score(where, hypothesis, correction, reference):
    return RowScore(where, hypothesis, correction, reference, edits(hypothesis, reference),
                    edits(correction, reference), len(nfc(reference)))


@dataclass(frozen=True)
class Summary(_Rates):
    """Corpus figures. ``cer_ratio`` is after / before (None when the hypotheses have no error);
    ``reduction`` is 1 - ratio; ``interval`` its bootstrap 95% interval (low, high)."""
    rows: int
    ref_chars: int
    edits_before: int
    edits_after: int
    better: int
    same: int
    worse: int
    exact: int
    interval: tuple | None
    seed: int
    resamples: int

    @property
    def cer_ratio(self):
        return self.edits_after / self.edits_before if self.edits_before else None

    @property
    def reduction(self):
        return None if self.cer_ratio is None else 1 - self.cer_ratio

    @property
    def exact_match_rate(self):
        return self.exact / max(self.rows, 1)

    @property
    def worse_fraction(self):
        return self.worse / max(self.rows, 1)

    def to_dict(self):
        r = (lambda x: None if x is None else round(x, 6))
        return {"rows": self.rows, "ref_chars": self.ref_chars, "edits_before": self.edits_before,
                "edits_after": self.edits_after, "cer_before": r(self.cer_before), "cer_after": r(self.cer_after),
                "cer_ratio": r(self.cer_ratio), "reduction": r(self.reduction),
                "reduction_ci95": None if self.interval is None else [r(x) for x in self.interval],
                "bootstrap": {"seed": self.seed, "resamples": self.resamples},
                "exact_match_rate": r(self.exact_match_rate), "exact": self.exact,
                "better": self.better, "same": self.same, "worse": self.worse,
                "worse_fraction": r(self.worse_fraction)}


def summarise(scores, seed=BOOTSTRAP_SEED, resamples=BOOTSTRAP_RESAMPLES):
    """The corpus figures of ``scores`` (a list of :class:`RowScore`), with a seeded bootstrap."""
    changes = [s.change for s in scores]
    return Summary(rows=len(scores), ref_chars=sum(s.ref_chars for s in scores),
                   edits_before=sum(s.edits_before for s in scores), edits_after=sum(s.edits_after for s in scores),
                   better=changes.count("better"), same=changes.count("same"), worse=changes.count("worse"),
                   exact=sum(s.exact for s in scores), interval=bootstrap_reduction(scores, seed, resamples),
                   seed=seed, resamples=resamples)


def bootstrap_reduction(scores, seed=BOOTSTRAP_SEED, resamples=BOOTSTRAP_RESAMPLES):
    """The 95% percentile interval of the relative CER reduction over ``resamples`` resamples of the
    rows (with replacement). A resample whose hypotheses have no error has no reduction and is
    left out; None when no resample has one."""
    if not scores:
        return None
    before = np.array([s.edits_before for s in scores], dtype=np.int64)
    after = np.array([s.edits_after for s in scores], dtype=np.int64)
    rng = np.random.default_rng(seed)
    found = []
    for start in range(0, resamples, CHUNK):
        pick = rng.integers(0, len(scores), size=(min(CHUNK, resamples - start), len(scores)))
        b, a = before[pick].sum(axis=1), after[pick].sum(axis=1)
        found.append(1 - a[b > 0] / b[b > 0])
    values = np.concatenate(found)
    if not values.size:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def extremes(scores, n=5):
    """(the ``n`` rows the adapter helped most, the ``n`` it hurt most): by edits saved / added,
    then by file order; only rows that changed."""
    helped = sorted((s for s in scores if s.change == "better"), key=lambda s: s.edits_after - s.edits_before)
    hurt = sorted((s for s in scores if s.change == "worse"), key=lambda s: s.edits_before - s.edits_after)
    return helped[:n], hurt[:n]
