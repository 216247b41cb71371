"""Running things on hosts: the one home of the ssh options (for Fabric, rsync, the launchers and
mlx.launch), Fabric connections that refuse unknown host keys, and the probe asked on every host in
parallel, its answers turned into typed facts (``facts.py``) as they arrive.
"""
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
from fabric import Connection
from invoke.exceptions import CommandTimedOut, ThreadException

from . import channel, fabconfig, handshake, keys, known_hosts, liveness, onhost, presession, sshopts
from .channel import OutputTooLarge
from .onhost import probe as onhost_probe

# the ssh options' home is sshopts.py; callers have always found them here
ssh_command, ssh_config, ssh_options = sshopts.ssh_command, sshopts.ssh_config, sshopts.ssh_options
PROBE_SOURCE, probe_argv = onhost.PROBE_SOURCE, onhost.probe_command
MAX_OUTPUT, CappedRemote = fabconfig.MAX_OUTPUT, fabconfig.CappedRemote  # Fabric's side: fabconfig.py


class HostError(RuntimeError):
    """A host could not be asked: unreachable, refused host key, no interpreter, bad answer.
    ``kind`` is a short verdict ('unreachable', 'host-key', 'key', 'timeout', 'error')."""

    def __init__(self, host, kind, message):
        super().__init__(f"{host}: {message}")
        self.host, self.kind, self.message = host, kind, message


class LaneConnection(Connection):
    """Fabric's Connection, also closing the ssh-agent session its key signs through. Its
    ``inline_ssh_env`` is an attribute of its own (Fabric's default, True): as a config key, setting
    it would write (and re-merge) the Config every Connection shares (``fabconfig.py``) while
    other threads read it."""
    lane_agent = None
    inline_ssh_env = True

    def close(self):
        try:
            super().close()
        finally:
            if self.lane_agent is not None:
                self.lane_agent.close()


def connect(inv, host):
    """A Fabric Connection to ``host`` that refuses any key not pinned in known_hosts (Fabric's own
    default accepts any key) and gives up after the connect timeout. Only the inventory's known_hosts
    is read (Fabric loads no system file), our key is chosen as ssh's IdentitiesOnly would (``keys.py``:
    the agent's copy of a passphrase-protected identity), the agent is never forwarded, and the
    handshake is ``handshake.transport``'s (TCP_NODELAY, the key exchange's order)."""
    t, known = inv.ssh.connect_timeout, Path(inv.ssh.known_hosts)
    if known.is_file():
        _check_known_hosts(host, known)
    try:
        auth, agent = _auth(inv.ssh.identity)
    except keys.KeyProblem as e:
        raise HostError(host.name, "key", str(e)) from None
    conn = LaneConnection(host.hostname, user=host.user, port=host.port, config=fabconfig.lane_config(t),
                          connect_timeout=t, forward_agent=False, connect_kwargs={
                              "banner_timeout": t, "auth_timeout": t, **auth, "transport_factory": handshake.transport})
    conn.lane_agent = agent
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    if known.is_file():
        known_hosts.pin(conn.client.get_host_keys(), known, host.hostname, host.port)
    return conn


_file_keys = {}  # {(identity, sha256 of its bytes): connect kwargs}: a key parsed once per run, not per host


def _auth(identity):
    """``keys.auth_kwargs(identity)``; a key read from its file (no agent) is kept while the file's
    bytes are the same (reading is cheap, parsing is the cost; size and mtime can survive an edit)."""
    try:
        version = identity and (identity, hashlib.sha256(Path(identity).read_bytes()).digest())
    except OSError:  # none there, or no file: keys.auth_kwargs says why
        version = None
    if version not in _file_keys:
        auth, agent = keys.auth_kwargs(identity)
        if not (version and agent is None and "pkey" in auth):
            return auth, agent
        _file_keys[version] = auth
    return _file_keys[version], None


def _check_known_hosts(host, path):
    try:
        problem = known_hosts.problem_once(path)
    except (OSError, UnicodeDecodeError) as e:
        problem = (None, f"cannot read it: {getattr(e, 'strerror', None) or e}")
    if problem:
        number, why = problem
        where = f"{path}, line {number}" if number else str(path)
        raise HostError(host.name, "host-key", f"{where}: {why}; refusing to connect. Keep the lane's "
                        f"pinned keys in a plain known_hosts file (ssh.known_hosts in the inventory)")


# Seconds between keepalives on a Fabric session: a long deep scan is never idle long enough for
# a NAT, a firewall or the host's sshd (ClientAliveInterval) to drop it. A host that stops
# answering is caught by the command timeout (paramiko sends keepalives but never waits for them).
KEEPALIVE = 10


def run(inv, host, argv, timeout=None, stdin=None, relay=None, again=None):
    """Run ``argv`` (quoted here) on ``host`` (or locally for ``local``): (exit code, stdout, stderr).
    ``timeout``: seconds the command may take (default: the inventory's ``ssh.probe_timeout``);
    past it the command is the host's ``timeout`` error. A stream over :data:`MAX_OUTPUT` bytes
    stops the command and is the host's error. Remote hosts only: ``stdin`` (a stream, Fabric's
    in_stream) and ``relay`` (a file-like getting stderr as it comes; it is still returned too).
    ``again(code, stdout, stderr)``: None, or a second argv to run instead in the same session."""
    timeout = timeout or inv.ssh.probe_timeout
    if host.is_local:
        result = _run_local(host, argv, timeout)
        second = again and again(*result)
        return _run_local(host, second, timeout) if second else result
    try:
        with presession.take(inv, host) or open_session(inv, host) as conn:  # one prepared ahead, if any
            with liveness.Watch(conn.transport, host.hostname, host.port, inv.ssh.connect_timeout) as watch:
                try:
                    result = _in_session(conn, argv, timeout, stdin, relay)
                    second = again and again(*result)
                    result = _in_session(conn, second, timeout, stdin, relay) if second else result
                except (paramiko.SSHException, OSError, EOFError, ThreadException, channel.TimedOut):
                    if not watch.down:
                        raise
            if watch.down:
                raise _link_down(inv, host, argv)
            return result
    except ThreadException as e:
        if any(isinstance(w.value, OutputTooLarge) for w in e.exceptions):
            raise _too_large(host) from None
        raise
    except OutputTooLarge:
        raise _too_large(host) from None
    except (CommandTimedOut, channel.TimedOut):
        raise _timed_out(host, argv, timeout) from None
    except (paramiko.SSHException, OSError, EOFError) as e:  # EOFError: paramiko's, bare, on a dropped connection
        raise _ssh_error(inv, host, e) from None


def _in_session(conn, argv, timeout, stdin, relay):
    """One command on the open ``conn``: on a bare channel (``channel.py``); fed on stdin, by Fabric's runner."""
    if stdin is None:
        r = channel.execute(conn.transport, shlex.join(argv), timeout, MAX_OUTPUT, relay)
        return r.exited, r.stdout, r.stderr
    streams = {"hide": "out", "err_stream": relay} if relay is not None else {"hide": True}
    r = conn.run(shlex.join(argv), warn=True, timeout=timeout, in_stream=stdin, **streams)
    return r.exited, r.stdout, r.stderr


def open_session(inv, host):
    """:func:`connect`, opened (host key checked, our key accepted), with keepalives on."""
    conn = connect(inv, host)
    try:
        conn.open()
        conn.transport.set_keepalive(KEEPALIVE)
    except BaseException:
        conn.close()
        raise
    return conn


def _link_down(inv, host, argv):
    half = max(0.5, inv.ssh.connect_timeout / 2)
    return HostError(host.name, "unreachable", f"the link to {host.hostname}:{host.port} went silent while "
                                               f"{argv[0]} ran: no ssh answer within {half:g}s and no new "
                                               f"connection within {half:g}s (cable pulled, Wi-Fi gone, host "
                                               f"asleep?); stopped waiting")


def _timed_out(host, argv, timeout):
    return HostError(host.name, "timeout", f"{argv[0]} gave no answer within {timeout}s "
                                           f"(the host stopped answering: asleep, or a disk hung?); stopped it")


def _ssh_error(inv, host, e):
    """A failure to open the session (or a dropped one) as the host's error, by kind."""
    where = f"{host.hostname}:{host.port}"
    if isinstance(e, paramiko.BadHostKeyException):
        return HostError(host.name, "host-key", f"host key for {where} CHANGED ({e.key.get_name()}); refusing "
                                                f"to connect. If the change is expected, fix {inv.ssh.known_hosts}")
    if "not found in known_hosts" in str(e):
        return HostError(host.name, "host-key", f"{where} is not in {inv.ssh.known_hosts}; refusing an unknown host key")
    if isinstance(e, paramiko.PasswordRequiredException):  # no ssh.identity: a ~/.ssh/id_* has a passphrase
        return HostError(host.name, "key", f"a key in ~/.ssh is passphrase-protected and no ssh-agent holds it "
                                           f"({e}): ssh-add it, or name the key as ssh.identity in the inventory")
    if isinstance(e, paramiko.AuthenticationException):
        keys_tried = f"key {inv.ssh.identity}" if inv.ssh.identity else "the agent's keys and ~/.ssh/id_*"
        return HostError(host.name, "key", f"{host.destination}:{host.port} refused {keys_tried} ({e}); "
                                           f"is its public half in the host's authorized_keys?")
    if isinstance(e, EOFError):
        e = "the connection closed"
    if isinstance(e, (paramiko.SSHException, str)):
        return HostError(host.name, "unreachable", f"ssh to {host.destination}:{host.port}: {e}")
    if isinstance(e, (socket.timeout, TimeoutError)):
        return HostError(host.name, "unreachable", f"no answer from {where} within {inv.ssh.connect_timeout}s")
    return HostError(host.name, "unreachable", f"cannot connect to {where}: {e.strerror or e}")


def _too_large(host):
    return HostError(host.name, "error", f"printed more than {MAX_OUTPUT // 2**20} MiB on one stream; "
                                         f"stopped it (a healthy probe prints a few MiB at most)")


def _run_local(host, argv, timeout):
    """:func:`run` for the control machine: a subprocess, its streams read up to the same cap."""
    try:
        code, out, err = capture(argv, timeout)
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: not found"
    except OSError as e:
        raise HostError(host.name, "error", f"cannot run {argv[0]}: {e.strerror or e}") from None
    except subprocess.TimeoutExpired:
        raise _timed_out(host, argv, timeout) from None
    except OutputTooLarge:
        raise _too_large(host) from None
    return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def capture(argv, timeout=None, **popen):
    """Run ``argv`` locally, no stdin: (exit code, stdout bytes, stderr bytes). Past ``timeout``
    seconds it is killed (TimeoutExpired); a stream past :data:`MAX_OUTPUT` bytes kills it too
    (:class:`OutputTooLarge`): what the lane reads from any program is capped, an ssh or rsync
    relaying a host's words included."""
    # a session of its own: on timeout the whole group goes (an rsync's ssh child would otherwise
    # keep stderr open, waiting on a host that does not answer, and the readers with it)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, **popen)
    with proc, ThreadPoolExecutor(max_workers=2) as pool:
        streams = [pool.submit(_read_capped, proc, s) for s in (proc.stdout, proc.stderr)]
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise
        out, err = (f.result() for f in streams)
    if out is None or err is None:
        raise OutputTooLarge("stdout" if out is None else "stderr")
    return code, out, err


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _read_capped(proc, stream):
    """All of ``stream``, or None (and the process killed) past :data:`MAX_OUTPUT` bytes."""
    data = stream.read(MAX_OUTPUT + 1)
    if len(data) > MAX_OUTPUT:
        proc.kill()
        return None
    return data


def in_process(host, args):
    """May probe command ``args`` run in this process (no interpreter start)? Only local's fast scan
    (metadata only) of a cache root the inventory names, when local's interpreter is of fab's own venv."""
    return (host.is_local and len(args) == 3 and args[0] == "cache" and args[2] != "-"
            and os.path.realpath(os.path.dirname(host.python)) == os.path.realpath(os.path.dirname(sys.executable)))


def run_probe(inv, host, args, timeout=None):
    """Run the probe with the host's own lane interpreter (or here, see :func:`in_process`); return
    its JSON (see :func:`ask`)."""
    if in_process(host, args):
        try:
            return json.loads(json.dumps(onhost_probe.command(list(args))))  # as a host's answer is
        except Exception as e:  # noqa: BLE001 - as a probe process would die of it: local's error
            raise HostError(host.name, "error", f"probe failed: {type(e).__name__}: {str(e)[:300]}") from None
    code, out, err = run(inv, host, probe_argv(host.python, args, stub=True), timeout=timeout,  # the kept copy
                         again=lambda code, _, err: onhost.asks_for_source(code, err) and probe_argv(host.python, args))
    if code == 127:
        raise HostError(host.name, "error", f"no interpreter at {host.python} (exit 127)")
    if code != 0:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        raise HostError(host.name, "error", f"probe failed with exit {code}: {tail[:300]}")
    return decode(host.name, out)


def decode(name, out):
    """The probe's stdout as one JSON document; anything else is host ``name``'s error."""
    try:
        return json.loads(out)
    except RecursionError:
        raise HostError(name, "error", "probe answer is nested too deeply to read") from None
    except ValueError:
        raise HostError(name, "error", f"probe printed no JSON: {out[:200]!r}") from None


def ask(inv, host, *queries, timeout=None):
    """The facts of ``queries`` (see ``facts.py``) on ``host``, in one ssh session: a list of typed
    facts in the order asked. A malformed answer is the host's error, not a traceback.
    ``timeout``: seconds for the whole probe (default: ``ssh.probe_timeout``, or
    ``ssh.deep_probe_timeout`` when a query re-hashes files)."""
    slow = any(q.slow for q in queries)
    timeout = timeout or (inv.ssh.deep_probe_timeout if slow else inv.ssh.probe_timeout)
    if len(queries) == 1:
        answers = [run_probe(inv, host, list(queries[0].args), timeout)]
    else:
        multi = json.dumps([list(q.args) for q in queries])
        answers = _results(host.name, run_probe(inv, host, ["multi", multi], timeout), len(queries))
    return parse_answers(host.name, queries, answers)


def _results(name, doc, count):
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list) or len(results) != count:
        raise HostError(name, "error", f"probe answer malformed: expected 'results' with {count} answers")
    return results


def parse_answers(name, queries, answers):
    """Each answer through its query's parser. The answers are host ``name``'s data, so whatever a
    parser raises on them (a missing key, a wrong type, nesting past the recursion limit) is that
    host's error, never a traceback."""
    parsed = []
    for query, answer in zip(queries, answers):
        try:
            parsed.append(query.parse(answer))
        except Exception as e:  # noqa: BLE001 - hostile data can break a parser in any way
            raise HostError(name, "error", f"probe answer malformed: {type(e).__name__}: {str(e)[:200]}") from None
    return parsed


def ask_each(inv, hosts, query_for):
    """One query per host, every host at once: {name: facts or HostError}."""
    return on_hosts(hosts, lambda h: ask(inv, h, query_for(h))[0])


def on_hosts(hosts, fn):
    """``fn(host)`` on every host at once; {name: value or HostError}, in the order given."""
    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        futures = {h.name: pool.submit(_guarded, fn, h) for h in hosts}
        return {name: f.result() for name, f in futures.items()}


def _guarded(fn, host):
    try:
        return fn(host)
    except HostError as e:
        return e
