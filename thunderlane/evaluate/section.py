"""The report's "Promotion decision" section and fab evaluate's summary: text from the
evaluation's data (see :func:`run.report`)."""


def _num(x, digits=4):
    return "-" if x is None else f"{x:.{digits}f}"


def figures(d):
    """The metrics as lines of text."""
    m = d["metrics"]
    ci = m.get("reduction_ci95")
    boot = m["bootstrap"]
    return [f"rows {m['rows']} ({d['bad_count']} bad rows not evaluated), step {d['step']}, split {d['split']}",
            f"CER before {_num(m['cer_before'])} ({m['edits_before']} edits / {m['ref_chars']} reference "
            f"characters), after {_num(m['cer_after'])} ({m['edits_after']} edits)",
            f"CER ratio {_num(m['cer_ratio'], 3)}, relative reduction {_num(m['reduction'], 3)}, 95% interval "
            + (f"[{_num(ci[0], 3)}, {_num(ci[1], 3)}]" if ci else "none")
            + f" (bootstrap, {boot['resamples']} resamples, seed {boot['seed']})",
            f"exact match {_num(m['exact_match_rate'], 3)} ({m['exact']} rows); better {m['better']}, same "
            f"{m['same']}, worse {m['worse']} ({_num(m['worse_fraction'], 3)})",
            f"test loss {_num(d['test_loss'])}; decoding {d['decode']['rows_per_s']} rows/s, "
            f"peak RSS {d['peak_rss_mb']} MB"]


def text(d):
    """fab evaluate's plain summary."""
    v = d["verdict"]
    lines = [f"evaluate: {line}" for line in figures(d)]
    lines += [f"bad row {b['where']}: {b['reason']}" for b in d["bad_rows"]]
    lines.append(f"verdict: {v['decision']}: " + "; ".join(v["reasons"]))
    lines.append(f"saved: {d['saved']}")
    return "\n".join(lines)


def _rows(title, rows):
    out = ["", f"{title}:", ""]
    if not rows:
        return out + ["- none"]
    for r in rows:
        out.append(f"- `{r['where']}` ({r['edits_before']} -> {r['edits_after']} edits): {r['hypothesis']} → "
                   f"{r['correction']} → {r['reference']}")
    return out


def markdown(d):
    """The "Promotion decision" section (lines), or the error that prevented the evaluation."""
    lines = ["## Promotion decision", ""]
    if d.get("error"):
        return lines + [f"- Not evaluated: {d['error']}", "", f"    {d.get('command', '')}"]
    v = d["verdict"]
    lines.append(f"Verdict: **{v['decision']}**: " + "; ".join(v["reasons"]))
    lines += [""] + [f"- {line}" for line in figures(d)]
    if d["bad_rows"]:
        shown = ", ".join(f"`{b['where']}` ({b['reason']})" for b in d["bad_rows"][:10])
        lines.append(f"- bad rows ({d['bad_count']}): {shown}" + (" ..." if d["bad_count"] > 10 else ""))
    lines += _rows("Helped most (hypothesis → correction → reference)", d["helped"])
    lines += _rows("Hurt most (hypothesis → correction → reference)", d["hurt"])
    lines += ["", f"Results: `{d['saved']}`. Reproduce:", "", f"    {d['command']}"]
    return lines
