"""Explanations computed from a run's own measurements (issue 12: "Every explanation in the document
is computed by the run, not written in advance").

Pure functions of a figure (the dict ``common.figure`` builds) and the machine facts the driver
measured; stdlib only, no I/O. A figure may carry, besides its value and per-run values:

- ``phases``: {phase: seconds}, the measured side split into the phases its script timed (the
  median run's, or per-phase medians),
  disjoint parts of its time; a key named ``wall`` is the whole time instead (what the parts leave
  of it becomes a phase of its own), ``internal`` a total that is no phase (left out);
- ``baseline_phases``: the same for the side it is compared with (a phase both sides have carries
  the same name);
- ``work``: the names of the phases that are the transfer or the computation itself (they grow
  with the size); every other phase is a fixed cost;
- ``facts``: measured facts, e.g. ``links`` = {link: {"tcp_mbit": .., "ssh_mbit": ..}} and
  ``ssh_ceiling_mbit`` (ssh's cipher with no link in the way) for a figure that compares links.

What a figure does not carry is said to be unmeasured, never guessed.
"""
import statistics
from dataclasses import dataclass

NO_SPLIT = "no phase split measured"


@dataclass(frozen=True)
class Machine:
    """What the driver measured about the machine while a script ran."""
    cores: int
    load: tuple = ()              # 1-minute load average before and after the script
    ssh_ceiling_mbit: float = None  # ssh's cipher throughput with no link in the way, if measured

    def sentence(self):
        if not self.load:
            return f"{self.cores} cores"
        peak = max(self.load)
        return (f"{self.cores} cores, load average {' -> '.join(f'{x:.2f}' for x in self.load)} while it ran "
                f"({peak / self.cores:.1f} runnable per core at the higher)")


def meets(f, value):
    """Whether ``value`` meets figure ``f``'s goal."""
    op, limit = f["op"], f["limit"]
    return value <= limit if op == "<=" else value >= limit if op == ">=" else value == limit


def numeric_runs(f):
    runs = f.get("runs")
    if isinstance(runs, list) and runs and all(isinstance(x, (int, float)) for x in runs):
        return [float(x) for x in runs]
    return []


def verdict(f):
    v, limit = f["value"], f["limit"]
    if v is None:
        return f"not measured ({f.get('detail') or 'no reason given'})"
    if f["op"] == "==" or not limit:
        return f"measured {v:.4g} against {f['goal']}"
    gap = (v - limit) / abs(limit)
    side = "over" if gap > 0 else "under"
    return f"measured {v:.4g} against {f['goal']}: {abs(gap):.{1 if abs(gap) < 0.1 else 0}%} {side} the limit"


def noise(f):
    """The spread of the per-run values, and how many single runs met the goal."""
    xs = numeric_runs(f)
    if len(xs) < 2:
        return "one run: no spread measured" if xs else "no per-run values: no spread measured"
    med = statistics.median(xs)
    lo, hi = min(xs), max(xs)
    met = sum(meets(f, x) for x in xs)
    spread = f" (spread {(hi - lo) / abs(med):.0%} of the median)" if med else ""
    text = f"per run {lo:.4g} to {hi:.4g}{spread}; {met} of {len(xs)} runs met the goal"
    if 0 < met < len(xs):
        text += ": the goal lies inside the run-to-run spread, so noise decides single runs"
    return text


def _ordered_names(*dicts):
    names = []
    for d in dicts:
        names += [n for n in d if n not in names]
    return names


TOTAL, IGNORED, UNTIMED = "wall", ("internal",), "not timed apart"


def parts(phases):
    """``phases`` as disjoint parts: without the totals; with what ``wall`` leaves as a phase."""
    found = {k: v for k, v in (phases or {}).items() if k != TOTAL and k not in IGNORED
             and isinstance(v, (int, float)) and not isinstance(v, bool)}   # seconds only
    rest = (phases or {}).get(TOTAL, 0.0) - sum(found.values())
    return {**found, UNTIMED: rest} if TOTAL in (phases or {}) and rest >= 0.005 else found


def total_of(phases):
    """The whole time: ``wall`` when given, else the sum of the parts."""
    return (phases or {}).get(TOTAL) or sum(parts(phases).values())


def overlap(phases):
    """A sentence when the parts add up to more than the whole time (phases that ran at once)."""
    phases = phases or {}
    found = sum(parts(phases).values())
    if TOTAL in phases and found > phases[TOTAL] + 0.005:
        return f"the phases add up to {found:.2f} s, more than the {phases[TOTAL]:.2f} s the run took: some overlap"
    return None


def phase_deltas(phases, baseline):
    """[(phase, measured - baseline seconds)], largest first."""
    deltas = [(n, phases.get(n, 0.0) - baseline.get(n, 0.0)) for n in _ordered_names(phases, baseline)]
    return sorted(deltas, key=lambda kv: -kv[1])


def phase_split(f):
    """Which phase dominates: of the difference to the baseline when both sides were split, else of
    the measured time."""
    phases, base = parts(f.get("phases")), parts(f.get("baseline_phases"))
    if not phases:
        return NO_SPLIT
    total = total_of(f.get("phases"))
    if not base:
        top = max(phases, key=phases.get)
        text = f"{total:.2f} s in all, {top} dominates with {phases[top]:.2f} s ({phases[top] / total:.0%})"
        return text + ("; the baseline was not split" if f.get("unit", "ratio") == "ratio" else "")
    base_total = total_of(f.get("baseline_phases"))
    diff = total - base_total
    deltas = phase_deltas(phases, base)
    top, dt = deltas[0]
    text = f"{total:.2f} s against the baseline's {base_total:.2f} s ({diff:+.2f} s)"
    if diff <= 0 or dt <= 0:
        return text + "; no phase is slower than the baseline's"
    added = sum(d for _, d in deltas if d > 0)
    text += f"; the phase that dominates the difference is {top} ({dt:+.2f} s, {dt / added:.0%} of the time added)"
    rest = [f"{n} {d:+.2f} s" for n, d in deltas[1:] if d >= 0.005]
    saved = [f"{n} {d:+.2f} s" for n, d in deltas if d <= -0.005]
    text += f", then {', '.join(rest)}" if rest else ""
    return text + (f"; faster than the baseline's: {', '.join(saved)}" if saved else "")


def fixed_cost(f):
    """Fixed cost against transfer/compute, and for a '<=' ratio the size at which the same fixed
    cost would fit the goal. None when the figure names no work phases."""
    phases, base, work = parts(f.get("phases")), parts(f.get("baseline_phases")), f.get("work") or ()
    if not phases or not work:
        return None
    fixed = {n: s for n, s in phases.items() if n not in work}
    busy = sum(s for n, s in phases.items() if n in work)
    text = (f"fixed cost {sum(fixed.values()):.2f} s ({', '.join(fixed) or 'none'}) against {busy:.2f} s of "
            f"transfer/compute ({', '.join(n for n in phases if n in work)})")
    if base and f["op"] == ">=" and f.get("unit", "ratio") == "ratio" and f["limit"] > 0:
        # the baseline's time over the measured side's: the goal caps the measured side's whole time
        cap = total_of(f.get("baseline_phases")) / f["limit"]
        return text + (f"; the goal needs the whole at most {cap:.2f} s (the baseline's "
                       f"{total_of(f.get('baseline_phases')):.2f} s / {f['limit']:g}): the transfer/compute alone "
                       f"took {busy:.2f} s, which leaves {cap - busy:.2f} s for every fixed cost, against "
                       f"{sum(fixed.values()):.2f} s measured")
    if not base or f["op"] != "<=" or f.get("unit", "ratio") != "ratio" or f["limit"] <= 1:
        return text
    b = total_of(f.get("baseline_phases"))
    allowed, extra = (f["limit"] - 1) * b, total_of(f.get("phases")) - b
    text += (f"; the goal allows {allowed:.2f} s over the baseline's {b:.2f} s "
             f"({f['limit'] - 1:.0%} of it), the run took {extra:+.2f} s")
    if extra > allowed > 0:
        needed = extra / (f["limit"] - 1)
        text += (f": were that extra fixed, the goal would hold from a baseline of {needed:.1f} s, "
                 f"{needed / b:.1f}x this run's work")
    return text


def work_rate(f):
    """The rate the work phases moved the figure's bytes at, against the links' measured rates."""
    facts, phases, work = f.get("facts") or {}, parts(f.get("phases")), f.get("work") or ()
    busy = sum(s for n, s in phases.items() if n in work)
    if not facts.get("bytes") or busy <= 0:
        return None
    mbit = facts["bytes"] * 8 / busy / 1e6
    text = f"the {', '.join(n for n in phases if n in work)} moved {facts['bytes'] / 1e6:.0f} MB at {mbit:.0f} Mbit/s"
    rates = [f"{mbit / link['ssh_mbit']:.0%} of ssh's rate on the {name} link"
             for name, link in (facts.get("links") or {}).items() if link.get("ssh_mbit")]
    return text + (f" ({', '.join(rates)})" if rates else "")


def cpu_bound(f):
    """For a figure whose measured side is CPU work spread over the cores (``facts['cpu']``: cores,
    the single-threaded start's CPU seconds, both sides' CPU seconds and the baseline's wall time,
    the number of extra units the measured side adds): the least wall time the measured side's own
    CPU allows (the start on one core, the rest at best spread over every core), the ratio that
    allows, and the CPU per extra unit the goal would need."""
    cpu = (f.get("facts") or {}).get("cpu")
    if not cpu or f["op"] != "<=" or f.get("unit", "ratio") != "ratio":
        return None
    cores, start, used, base_cpu, base_wall, extra = (cpu[k] for k in (
        "cores", "start_cpu_s", "cpu_s", "baseline_cpu_s", "baseline_wall_s", "extra_units"))
    least = start + max(used - start, 0.0) / cores
    floor = least / base_wall
    text = (f"on {cores} cores the measured side's CPU (medians: {used:.2f} s, {start:.2f} s of it a single-threaded "
            f"start) needs {least:.3f} s at best, the rest spread over every core: a ratio of {floor:.2f} against "
            f"the baseline's {base_wall:.3f} s")
    if f["value"] is not None and f["value"] <= 1.1 * floor:
        text += f", where the run measured {f['value']:.2f}: as fast as its CPU allows on these cores"
    room = (f["limit"] * base_wall - start) * cores + start - base_cpu   # CPU the goal leaves the extra units
    per, measured_per = room / extra, (used - base_cpu) / extra
    text += (f"; the goal would need at most {per * 1000:.0f} ms of CPU per {cpu.get('unit', 'extra unit')} "
             f"({measured_per * 1000:.0f} ms measured)" if room > 0 else
             "; the goal is out of reach on these cores whatever each extra unit costs")
    return text


def _bound(link, ceiling):
    rates = [r for r in (link.get("tcp_mbit"), link.get("ssh_mbit"), ceiling) if r]
    return min(rates) if rates else None


def _ceiling(ceiling, measured):
    """ssh's ceiling as the bounds use it: never below what ssh carried over a link (a link cannot
    add speed; a lower ceiling was measured while the machine was busier), and a note saying so."""
    over = max((link.get("ssh_mbit") or 0 for link in measured.values()), default=0)
    if not ceiling or over <= ceiling:
        return ceiling, ""
    return over, f" (below the {over:.0f} Mbit/s ssh carried over a link: load; {over:.0f} taken as the ceiling)"


def _limiter(link, ceiling):
    """What holds a transfer over ssh on ``link`` back: the link (ssh reaches 90% of raw TCP), else
    ssh itself (its cipher and its share of the cores), naming its ceiling when measured."""
    tcp, ssh = link.get("tcp_mbit"), link.get("ssh_mbit")
    if ceiling and _bound(link, ceiling) == ceiling and not (ssh and ssh <= ceiling):
        return "ssh's own ceiling, measured with no link in the way"
    if tcp and ssh and ssh >= 0.9 * tcp:
        return "the link's own rate"
    cap = f", ssh {ceiling:.0f} Mbit/s with no link in the way" if ceiling else ""
    return f"ssh: raw TCP carried {tcp:.0f} Mbit/s on this link{cap}" if tcp else "ssh; raw TCP not measured"


def links(f):
    """For a figure that compares links: the rate each link carried, what bounds a transfer over
    ssh on it, and the ratio those rates allow against the one measured."""
    facts = f.get("facts") or {}
    measured = facts.get("links") or {}
    if not measured:
        return None
    ceiling, note = _ceiling(facts.get("ssh_ceiling_mbit"), measured)
    parts = []
    for name, link in measured.items():
        rates = ", ".join(f"{k.replace('_mbit', '')} {v:.0f} Mbit/s" for k, v in link.items()
                          if k.endswith("_mbit") and v)
        parts.append(f"{name} link: {rates or 'not measured'}")
    text = "; ".join(parts)
    if ceiling:
        text += f"; ssh's cipher alone (no link) {facts['ssh_ceiling_mbit']:.0f} Mbit/s{note}"
    fast, slow = facts.get("fast_link"), facts.get("slow_link")
    if fast not in measured or slow not in measured:
        return text
    # the rsync daemon (fast_transport "rsyncd") sends the fast link's bytes in clear: raw TCP bounds it
    clear = facts.get("fast_transport") == "rsyncd" and measured[fast].get("tcp_mbit")
    bf = measured[fast]["tcp_mbit"] if clear else _bound(measured[fast], ceiling)
    bs = _bound(measured[slow], ceiling)
    if not (bf and bs):
        return text
    shaped = [measured[n].get("shaped_mbit") for n in (fast, slow)]
    tcp = [measured[n].get("tcp_mbit") for n in (fast, slow)]
    if all(shaped) and all(tcp):
        text += (f". The links were shaped to a ratio of {shaped[0] / shaped[1]:.2f}; raw TCP reached "
                 f"{tcp[0] / tcp[1]:.2f} ({fast} {tcp[0] / shaped[0]:.0%} of its shaped rate, "
                 f"{slow} {tcp[1] / shaped[1]:.0%})")
    over_fast = (f"Through the rsync daemon (no ssh) the {fast} link carries at most {bf:.0f} Mbit/s (raw TCP)"
                 if clear else
                 f"Over ssh the {fast} link carries at most {bf:.0f} Mbit/s ({_limiter(measured[fast], ceiling)})")
    text += (f". {over_fast} and, over ssh, the {slow} link {bs:.0f} Mbit/s ({_limiter(measured[slow], ceiling)}): "
             f"these rates allow a ratio of {bf / bs:.2f}")
    if f["value"] is not None:
        text += f", the run measured {f['value']:.2f} ({f['value'] / (bf / bs):.0%} of what the rates allow)"
    return text


def explain(f, machine=None):
    """Sentences explaining figure ``f`` from its own measurements."""
    said = [verdict(f), phase_split(f)]
    said += [p for p in (overlap(f.get("phases")), fixed_cost(f), work_rate(f), links(f), cpu_bound(f)) if p]
    said.append(noise(f))
    if machine:
        said.append("machine: " + machine.sentence())
    return "; ".join(said[:2]) + ". " + ". ".join(p[0].upper() + p[1:] for p in said[2:]) + "."


def general_notes(results, machine, model_mb, train_model_mb, ram_gb):
    """The notes under the table: facts true by construction, filled with this run's numbers."""
    counts = sorted({len(numeric_runs(f)) for r in results for f in r.get("figures", []) if numeric_runs(f)})
    notes = [f"A ratio is the median of one side's runs over the median of the other's (where the 'of' column "
             f"says pairs: the median of the per-pair ratios); timed pairs alternate their order run by run; runs per figure in this document: "
             f"{', '.join(map(str, counts)) or 'none'}; the per-run values are in the details.",
             f"Byte-bound figures use a {model_mb:g} MB model, training figures a {train_model_mb:g} MB model; "
             f"the machine has {ram_gb:.0f} GB of RAM, so the byte-bound model "
             f"{'fits' if model_mb < ram_gb * 1024 / 2 else 'does not fit'} in half of it (page cache)."]
    notes.append("Machine: " + machine.sentence().replace(" while it ran", " over the whole driver") + ".")
    if machine.ssh_ceiling_mbit:
        notes.append(f"ssh's cipher, measured with no link in the way: {machine.ssh_ceiling_mbit:.0f} Mbit/s "
                     f"({machine.ssh_ceiling_mbit / 8:.0f} MB/s), what one ssh stream carried here with nothing else in its way.")
    else:
        notes.append("ssh's cipher throughput was not measured in this run.")
    return notes
