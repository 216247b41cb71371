# thunderlane on-host rank prologue: stdlib only, bundled FIRST into the training entry
"""What a rank must do before anything imports huggingface_hub or mlx-lm: point ``HF_HUB_CACHE``
at the inventory's ``hf_cache`` for this host (huggingface_hub reads it once, at import), and on
macOS keep the machine awake while the rank lives (``caffeinate -i -s -w <pid>``).

Run as a bundle (``python -c``), ``__name__`` is ``"__main__"`` and :func:`prologue` runs at once,
reading the spec (the last argument) and ``MLX_RANK``; imported from ``thunderlane.onhost`` it
does nothing by itself. A bad spec is left to the entry's ``main`` to report."""
import json
import os
import subprocess
import sys

LAB_HOST = "THUNDER_LAB_HOST"  # set only by the lab's sshd: the licence of lab-only switches
MACOS_TOOLS = "/usr/bin"  # where macOS keeps caffeinate


def rank_environment(spec, rank):
    """The variables rank ``rank`` sets before the imports: ``HF_HUB_CACHE`` when the inventory
    names this host's ``hf_cache`` (else the host's own default resolution stands)."""
    cache = spec["ranks"][rank].get("hf_cache")
    return {"HF_HUB_CACHE": str(cache)} if cache else {}


def lab_tools(spec, environ):
    """The folder of stand-in macOS tools the lab forces (spec ``force_darwin``), honoured only on
    a lab host; None elsewhere."""
    forced = spec.get("force_darwin")
    return forced if forced and environ.get(LAB_HOST) else None


def darwin_tools(spec, environ, platform=sys.platform):
    """Where this rank finds macOS's tools when macOS behaviours are on (Darwin, or the lab forcing
    them), else None."""
    forced = lab_tools(spec, environ)
    if forced:
        return forced
    return MACOS_TOOLS if platform == "darwin" else None


def caffeinate_argv(tools, pid):
    """``caffeinate -i -s -w PID``: no idle or system sleep while process ``pid`` lives."""
    return [os.path.join(tools, "caffeinate"), "-i", "-s", "-w", str(pid)]


def start_caffeinate(tools, pid):
    """Start caffeinate for ``pid`` (it ends by itself when ``pid`` does); its pid, or the reason
    it could not start (the rank trains on, and says so in its start event)."""
    try:
        p = subprocess.Popen(caffeinate_argv(tools, pid), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
    except OSError as e:
        return f"not started: {e.strerror or e}"
    return p.pid


def prologue(argv, environ, platform=sys.platform):
    """Set this rank's environment; start caffeinate on macOS. Returns what was done, for the
    rank's start event: {"hf_hub_cache": path or None, "caffeinate": pid, reason or None}."""
    try:
        spec = json.loads(argv[-1])
        rank = int(environ.get("MLX_RANK", "0"))
        env = rank_environment(spec, rank)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return {}
    environ.update(env)
    tools = darwin_tools(spec, environ, platform)
    return {"hf_hub_cache": env.get("HF_HUB_CACHE"),
            "caffeinate": start_caffeinate(tools, os.getpid()) if tools else None}


if __name__ == "__main__":
    RANK_PROLOGUE = prologue(sys.argv, os.environ)
