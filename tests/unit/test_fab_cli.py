"""The fab command line itself: flags as Fabric users expect them."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")


def test_fabric_hosts_flag_is_refused_with_the_lane_s_own_flags_named(tmp_path):
    """`fab -H mac4 verify-cache` would run the whole task once per -H host: refused, with the hint."""
    env = {"THUNDER_INVENTORY": str(tmp_path / "nowhere.yaml"), "PATH": "/usr/bin:/bin"}
    for task in ("verify-cache", "verify-dataset", "sync-cache"):
        p = subprocess.run([FAB, "-H", "mac4", task], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, (task, p.stdout, p.stderr)
        assert "-H mac4" in p.stderr and "--hosts" in p.stderr and "--host mac4" in p.stderr


def test_typed_flags_need_no_casts(tmp_path):
    """Invoke types a flag from its default: a non-number for --target is refused by the parser."""
    env = {"THUNDER_INVENTORY": str(tmp_path / "nowhere.yaml"), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([FAB, "train-window", "--target", "ten"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0 and "ten" in p.stderr + p.stdout
