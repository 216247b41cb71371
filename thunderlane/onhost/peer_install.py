# thunderlane on-host peer key installer: stdlib only (bundled after peer.py)
"""``fab setup-peers``' program on each host: reads {key, known_hosts, authorized} as JSON on
stdin (the private key never appears on a command line), installs them (``peer.install_peer``)
and prints {home, changed} as JSON."""
import json
import sys

if __package__:  # imported from thunderlane.onhost; in a bundle, peer.py defined it above
    from .peer import install_peer


def main():
    try:
        doc = json.loads(sys.stdin.read())
        out = install_peer({"key": doc["key"], "known_hosts": doc["known_hosts"],
                            "authorized": doc.get("authorized")})
    except (ValueError, KeyError, TypeError, OSError) as e:
        sys.stderr.write(f"peer install: {type(e).__name__}: {e}\n")
        return 1
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
