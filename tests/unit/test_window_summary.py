"""fab train-window's last step, its summary, loads nothing beyond the window's own modules."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_train_window_prints_its_summary_without_loading_handoff():
    """`fab train-window`'s last step (its summary) must not import handoff's module (sync, mirror,
    evaluate...): 0.1-0.4 s after the window, on every window."""
    code = ("import sys, fabfile\n"
            "from invoke import Context\n"
            "from thunderlane import window\n"
            "from thunderlane.report import Report\n"
            "done = window.WindowResult('p', 10, window.ALREADY, 'at 10', Report('preflight', ()), trained=False)\n"
            "window.train_window = lambda *a, **k: done\n"
            "fabfile._inventory, fabfile._profile = (lambda: None), (lambda name: None)\n"
            "fabfile.train_window.body(Context(), json=True)\n"
            "print('thunderlane.handoff' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert '"verdict": "already-at-target"' in p.stdout and p.stdout.strip().splitlines()[-1] == "False", p.stdout
