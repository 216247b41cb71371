"""Helpers the bash launchers call: ``python -m thunderlane.launcher_helpers COMMAND ...``.

  committed-step PROFILE                          the writer's committed step (0 if none)
  lock-dir PROFILE                                the window lock directory on this machine
  take-lock PROFILE PID                           take it for PID: "taken|taken-over|held PID|- DIR";
                                                  exit 0, or 75 when another live window holds it
  plan-window PROFILE --to N --target T [--from S|-] --out DIR
                                                  write one window's hostfile, spec, ssh config; with
                                                  --from S, fail unless the writer is still at step S
"""
import argparse
import sys

from . import fsutil, inventory, layout, profiles

EX_LOCKED = 75  # as the chunk runner's: another window of the run holds the lock


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m thunderlane.launcher_helpers")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("committed-step", "lock-dir"):
        sub.add_parser(name).add_argument("profile")
    take = sub.add_parser("take-lock")
    take.add_argument("profile")
    take.add_argument("pid", type=int)
    plan = sub.add_parser("plan-window")
    plan.add_argument("profile")
    plan.add_argument("--to", type=int, required=True)
    plan.add_argument("--target", type=int, required=True)
    plan.add_argument("--from", dest="from_step", default="-")
    plan.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        inv = inventory.load()
        profile = profiles.load(args.profile)
    except (inventory.InventoryError, profiles.ProfileError) as e:
        print(f"thunderlane: {e}", file=sys.stderr)
        return 2
    lock = layout.local(inv).lock(profile.run_name)
    if args.command == "lock-dir":  # no Fabric import for these two: they run before every window
        print(lock)
        return 0
    if args.command == "take-lock":
        state, pid = fsutil.take_lock(lock, args.pid)
        print(state, pid or "-", lock)
        return EX_LOCKED if state == "held" else 0
    return _with_hosts(inv, profile, args)


def _with_hosts(inv, profile, args):
    from . import window
    from .remote import HostError
    try:
        if args.command == "committed-step":
            print(window.committed(inv, profile))
        else:
            from_step = None if args.from_step == "-" else int(args.from_step)
            window.plan_window(inv, profile, args.to, args.target, args.out, from_step)
    except (window.WindowError, HostError) as e:
        print(f"thunderlane: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
