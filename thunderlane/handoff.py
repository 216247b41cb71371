"""handoff: the whole bounded job in one command, and the report a person can hand on.

verify-dataset, verify-cache, sync-cache for each host that is not complete, train-window,
mirror-back, then a report (Markdown and JSON) saved in the local mirror and the writer's run
directory, answering exactly what the handoff asks back."""
import json
import shlex
import subprocess
import sys
import time

from . import layout, mirror, peer_sync, window
from .evaluate import run as evaluate_run, section as evaluate_section
from .facts import thaw
from .fsutil import atomic_write, real_folder
from .rsync_ssh import rsync_env, rsync_remote, rsync_shell
from .report import printable
from .remote import HostError
from .sync import SyncError
from .verify import verify_cache, verify_dataset

REPORT_MD = "handoff_report.md"
REPORT_JSON = "handoff_report.json"


def run(inv, profile, target, window_size, watchdog=None, out=sys.stdout, force=False):
    """Run every phase, stopping at the first that leaves the next one pointless; return the
    report data (also written to disk when there is a run to attach it to). ``force`` is
    mirror-back's: replace a mirror of another run or a later step, keeping it as a dated copy."""
    hosts = window.profile_hosts(inv, profile)
    phases, blockers = {}, []
    data = {"profile": profile.name, "target": target, "window": window_size, "phases": phases,
            "hosts": [h.name for h in hosts], "started": _now(), "blockers": blockers}

    def phase(name, fn):
        t0 = time.monotonic()
        out.write(f"\n== {name}\n")
        out.flush()
        result = fn()
        phases[name] = {"seconds": round(time.monotonic() - t0, 2)}
        return result

    ds = phase("verify-dataset", lambda: verify_dataset(inv, hosts))
    out.write(ds.to_table(["rows", "bytes", "digest"]) + "\n")
    data["dataset"] = [r.to_dict() for r in ds.results]
    before, _ = phase("verify-cache", lambda: verify_cache(inv, hosts))
    out.write(before.to_table(["revision", "files", "bytes", "missing"]) + "\n")
    data["cache_before"] = [r.to_dict() for r in before.results]
    data["sync"] = phase("sync-cache", lambda: _sync_cold(inv, hosts, before, out))
    after, _ = phase("verify-cache-after", lambda: verify_cache(inv, hosts))
    out.write(after.to_table(["revision", "files", "bytes", "missing"]) + "\n")
    data["cache_after"] = [r.to_dict() for r in after.results]
    if not ds.ok:
        blockers.append("dataset: " + "; ".join(f"{r.host} {r.verdict}: {r.detail}" for r in ds.results if not r.ok))
    if not after.ok:
        blockers.append("cache: " + "; ".join(f"{r.host} {r.verdict}: {r.detail}" for r in after.results if not r.ok))
    if not blockers:
        result = phase("train-window", lambda: window.train_window(inv, profile, target, window_size,
                                                                    watchdog=watchdog, out=out, task="handoff"))
        data["train"] = window.train_summary(result)
        if not result.ok:
            blockers.append(f"train-window: {result.verdict}: {result.explanation}")
    if not blockers or data.get("train", {}).get("gate_ok"):
        try:
            m = phase("mirror-back", lambda: mirror.mirror_back(inv, profile, force=force))
            data["mirror"] = {"ok": True, "local_dir": m.local_dir, "remote_dir": m.remote_dir,
                              "step": m.step, "files": m.files, "bytes_sent": m.literal_bytes,
                              "bytes_sent_derived_from": m.derived_from,
                              "replaced": m.replaced, "notes": m.notes}
        except mirror.MirrorError as e:
            data["mirror"] = {"ok": False, "error": str(e)}
            blockers.append(f"mirror-back: {e}")
    if (data.get("mirror") or {}).get("ok") and profile.promotion.on_handoff:
        data["evaluation"] = phase("evaluate", lambda: evaluate_run.for_handoff(inv, profile, out=out))
    data["finished"] = _now()
    data["ok"] = not blockers
    data["reproduce"] = reproduce_commands(inv, profile, target, window_size)
    save(inv, profile, data)
    return data


def _sync_cold(inv, hosts, report, out):
    """sync-cache for every host whose cache is not complete, each from the nearest complete source
    (``peer_sync.fill``: a complete peer over the data link, else local), in parallel; what each was
    before and after, and its source."""
    cold = {r.host for r in report.results if r.host != "local" and not r.ok}
    targets = [h for h in hosts if h.name in cold]
    if not targets:
        return {}
    try:
        filled = peer_sync.fill(inv, targets, out=out)
    except (SyncError, HostError) as e:
        return {h.name: {"error": str(e)} for h in targets}
    done = {}
    for f in filled:
        o, source = f.outcome, {"source": f.step.source, "why": f.step.why}
        if o is None or f.error:
            done[f.step.target] = {**source, "error": f.error}
            continue
        done[f.step.target] = {**source, "before": o.before.verdict, "after": o.after.verdict if o.after else "?",
                               "missing_bytes": o.missing_bytes, "bytes_sent": o.literal_bytes,
                               "bytes_sent_derivation": o.derivation}
    return done


def reproduce_commands(inv, profile, target, window_size):
    env = f"THUNDER_INVENTORY={shlex.quote(inv.path)}"
    return [f"{env} fab handoff --profile {profile.name} --target {target} --window {window_size}",
            f"{env} launchers/run_gemma4_e2b_nko_correction_chunks.sh {profile.name} {target} {window_size}"]


def render_markdown(d):
    """The report for people: what the handoff's 'Deliverable Format Back To Main Lane' asks."""
    t = d.get("train") or {}
    g = (t.get("gate") or {})
    fig = g.get("figures") or {}
    lines = [f"# Thunder lane handoff: {d['profile']} to step {d['target']}", "",
             f"Result: **{'OK' if d['ok'] else 'BLOCKED'}** ({d['started']} to {d['finished']})", "",
             "## Dataset verification", "", "| host | verdict | rows | digest | detail |", "|---|---|---|---|---|"]
    for r in d["dataset"]:
        f = r["figures"]
        lines.append(f"| {r['host']} | {r['verdict']} | {f.get('rows', '-')} | {f.get('digest', '-')} | {r['detail']} |")
    lines += ["", "## Gemma cache verification", "", "| host | before | after | files | bytes | detail |",
              "|---|---|---|---|---|---|"]
    after = {r["host"]: r for r in d["cache_after"]}
    for r in d["cache_before"]:
        a = after.get(r["host"], r)
        lines.append(f"| {r['host']} | {r['verdict']} | {a['verdict']} | {a['figures'].get('files', '-')} | "
                     f"{a['figures'].get('bytes', '-')} | {a['detail']} |")
    for host, s in d["sync"].items():
        lines += ["", f"{host} was {s.get('before', '?')} before the sync; sync-cache from {s.get('source', 'local')}: "
                     + (f"sent {s.get('bytes_sent')}{s.get('bytes_sent_derivation', '')} of {s.get('missing_bytes')} "
                        f"missing bytes, now {s.get('after')}"
                        if "error" not in s else s["error"])]
    lines += ["", "## Training window", "",
              f"- Command: `{t.get('command') or '(not launched)'}`"]
    for plan in t.get("plans", []):  # the exact line is long: the JSON report holds it, the plan keeps it
        lines.append(f"- mlx.launch: the exact line is in `{plan}/mlx_launch_line`")
    lines += [f"- Verdict: {t.get('verdict', 'not run')}: {t.get('explanation', '')}",
              f"- checkpoint.json reached step {d['target']}: **{'yes' if t.get('gate_ok') else 'no'}**"
              f" (at step {fig.get('step', '-')})",
              f"- Run directory (writer): `{fig.get('run_dir', '-')}`",
              f"- Local mirror: `{(d.get('mirror') or {}).get('local_dir', '-')}`"
              f" ({'verified' if (d.get('mirror') or {}).get('ok') else 'not mirrored'})"
              + (f"; the mirror it replaced is kept as `{d['mirror']['replaced']}`"
                 if (d.get('mirror') or {}).get('replaced') else ""),
              f"- Metrics: train loss {_num(fig.get('train_loss'))}, validation loss {_num(fig.get('val_loss'))}",
              f"- Run id {d.get('run_id', '-')}, dataset digest {d.get('dataset_digest', '-')}, "
              f"model revision {d.get('revision', '-')}", ""]
    if d.get("evaluation"):
        lines += evaluate_section.markdown(d["evaluation"]) + [""]
    lines += ["## What still blocks the next window", ""]
    lines += [f"- {b}" for b in d["blockers"]] or ["- nothing: the next window can start from this checkpoint"]
    lines += ["", "## Reproduce", ""] + [f"    {c}" for c in d["reproduce"]]
    lines += ["", "## Phase times", ""] + [f"- {k}: {v['seconds']}s" for k, v in d["phases"].items()]
    # text from hosts (details, errors) may hold control characters: shown escaped, one line each
    return "\n".join(printable(line) for line in lines) + "\n"


def save(inv, profile, data):
    """Write the report into the local mirror when this handoff mirrored (else the local reports
    folder, never a mirror of another run) and into the writer's run dir. Nothing is written
    through a link: the folder is checked part by part, the files are replaced, not written into."""
    _enrich(inv, profile, data)
    where = layout.local(inv)
    mirrored = (data.get("mirror") or {}).get("ok")
    target = where.mirror(profile.run_name) if mirrored else where.reports(profile.run_name)
    try:
        real_folder(target, where.root)
        atomic_write(target / REPORT_MD, render_markdown(data))
        atomic_write(target / REPORT_JSON, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    except OSError as e:
        data["report_local"], data["report_remote"] = None, f"not written: {e}"
        return
    data["report_local"] = str(target / REPORT_MD)
    data["report_remote"] = _push(inv, profile, target)


def _enrich(inv, profile, data):
    try:
        _, facts = window.writer_facts(inv, profile)
    except window.WindowError:
        return
    record = thaw(facts.record)
    data["run_id"] = record.get("run_id")
    data["dataset_digest"] = record.get("dataset_digest")
    data["revision"] = (record.get("model") or {}).get("revision")
    data["versions"] = record.get("versions")


def _push(inv, profile, folder):
    """Copy the two report files into the writer's run directory (if it exists) with rsync."""
    writer, remote = window.writer_run_dir(inv, profile)
    with rsync_shell(inv, writer) as ssh:
        argv = ["rsync", "-t", f"--timeout={inv.ssh.rsync_timeout}", "-e", ssh, f"--rsync-path={writer.rsync_path}",
                str(folder / REPORT_MD), str(folder / REPORT_JSON), rsync_remote(writer, f"{remote}/")]
        try:  # two small files: nothing of rsync's output is read, and the whole push is bounded
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=rsync_env(), timeout=inv.ssh.rsync_timeout)
        except subprocess.TimeoutExpired:
            return None
    return f"{writer.name}:{remote}/{REPORT_MD}" if p.returncode == 0 else None


def _num(x):
    return f"{x:.4f}" if isinstance(x, float) else "-"


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
