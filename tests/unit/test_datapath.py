"""The data-path check's pure parts (which endpoints, who dials whom, the verdicts) and the on-host
listener/dialer on this machine's loopback (real sockets, no ssh)."""
import socket
import threading
import time

import pytest

from thunderlane.onhost.links import links_facts, parse_ibv_devices
from thunderlane.remote import HostError
from thunderlane.report import HostResult, Report
from thunderlane.window import datapath, triage
from thunderlane.window.datapath import Endpoint, LinkFacts, RdmaFacts

from .test_backends import inv_with


def hosts(count):
    inv, names = inv_with(count)
    return [inv.hosts[n] for n in names]


def test_ring_ranks_listen_on_their_data_ip_at_starting_port_plus_rank():
    # mlx launch_ring: port = starting_port, +1 per host (one IP per host, one connection per IP)
    assert datapath.endpoints(hosts(3), "ring", 32323) == [
        Endpoint("mac4", "169.254.10.4", 32323), Endpoint("mac5", "169.254.10.5", 32324),
        Endpoint("mac6", "169.254.10.6", 32325)]


def test_jaccl_ranks_dial_rank_0_coordinator_only():
    # mlx launch_jaccl: MLX_JACCL_COORDINATOR = hosts[0].ips[0]:starting_port
    assert datapath.endpoints(hosts(3), "jaccl", 40000) == [Endpoint("mac4", "169.254.10.4", 40000)]
    req = datapath.requests(hosts(3), "jaccl", 40000)
    assert req["mac4"]["listen"] == [["169.254.10.4", 40000]] and req["mac4"]["connect"] == []
    assert req["mac4"]["expect"] == 2
    assert req["mac6"] == {"listen": [], "connect": [["mac4", "169.254.10.4", 40000]], "expect": 0,
                           "wait": datapath.WAIT, "timeout": datapath.TIMEOUT}


def test_ring_every_host_dials_every_other():
    req = datapath.requests(hosts(3), "ring", 100)
    assert req["mac5"]["listen"] == [["169.254.10.5", 101]]
    assert req["mac5"]["connect"] == [["mac4", "169.254.10.4", 100], ["mac6", "169.254.10.6", 102]]
    assert req["mac5"]["expect"] == 2


@pytest.mark.parametrize("raw", ["0", "65536", "x", "-1", "80 81"])
def test_bad_ring_port_is_refused(raw):
    with pytest.raises(datapath.PortError, match="THUNDER_RING_PORT"):
        datapath.starting_port({"THUNDER_RING_PORT": raw})


def test_ring_port_default_and_override():
    assert datapath.starting_port({}) == 32323 and datapath.starting_port({"THUNDER_RING_PORT": "33400"}) == 33400


def listen(ip, port, ok=True, in_use=False, error=None):
    return {"ip": ip, "port": port, "ok": ok, "in_use": in_use, "error": error}


def dial(peer, ip, port, error=None):
    return {"peer": peer, "ip": ip, "port": port, "ok": error is None, "error": error, "tries": 1, "seconds": 0.1}


def test_a_broken_pair_is_a_data_link_naming_both_ends():
    answers = {"mac4": LinkFacts((listen("10.0.0.4", 32323),), (dial("mac5", "10.0.0.5", 32324, "timed out after 2s"),)),
               "mac5": LinkFacts((listen("10.0.0.5", 32324),), (dial("mac4", "10.0.0.4", 32323),))}
    problems = datapath.judge_links(answers)
    assert problems == {"mac4": ["data-link: mac4 -> mac5 10.0.0.5:32324: timed out after 2s"], "mac5": []}
    assert datapath.verdict(problems["mac4"]) == "data-link" and datapath.verdict([]) == "ready"


def test_a_port_in_use_is_not_a_broken_link():
    answers = {"mac4": LinkFacts((listen("10.0.0.4", 32323),), (dial("mac5", "10.0.0.5", 32324, "Connection refused"),)),
               "mac5": LinkFacts((listen("10.0.0.5", 32324, ok=False, in_use=True, error="Address already in use"),),
                                 (dial("mac4", "10.0.0.4", 32323),))}
    problems = datapath.judge_links(answers)
    assert problems["mac4"] == []
    assert len(problems["mac5"]) == 1 and problems["mac5"][0].startswith("port in use: ring port 10.0.0.5:32324")
    assert datapath.verdict(problems["mac5"]) == "refused"


def test_a_data_ip_the_host_does_not_have_is_a_data_link():
    answers = {"mac5": LinkFacts((listen("10.0.0.9", 32324, ok=False, error="Cannot assign requested address"),), ())}
    assert datapath.judge_links(answers)["mac5"] == [
        "data-link: cannot listen on 10.0.0.9:32324 here: Cannot assign requested address "
        "(is data_ip an address of this host?)"]


def test_pairs_to_a_host_that_could_not_be_asked_are_not_judged():
    answers = {"mac4": LinkFacts((listen("10.0.0.4", 32323),), (dial("mac5", "10.0.0.5", 32324, "Connection refused"),)),
               "mac5": HostError("mac5", "unreachable", "no answer")}
    assert datapath.judge_links(answers) == {"mac4": [], "mac5": ["data path not checked: unreachable: no answer"]}


def test_rdma_devices_missing_tool_none_listed_or_not_the_inventorys():
    hs = hosts(2)
    answers = {"mac4": RdmaFacts(None, (), "ibv_devices not found"), "mac5": RdmaFacts("/usr/bin/ibv_devices", ("rdma_en2",), None)}
    problems = datapath.judge_rdma(hs, answers)
    assert "ibv_devices not found" in problems["mac4"][0]
    assert problems["mac5"] == ["jaccl: the inventory's rdma device(s) rdma_en3 are not among ibv_devices' rdma_en2"]
    empty = datapath.judge_rdma(hs, {"mac4": RdmaFacts("/x", (), None), "mac5": RdmaFacts("/x", ("rdma_en3",), None)})
    assert "lists no RDMA device" in empty["mac4"][0] and empty["mac5"] == []
    inv, names = inv_with(2, rdma=False)
    bare = datapath.judge_rdma([inv.hosts[n] for n in names], {})
    assert bare["mac4"] == ["jaccl: the inventory's rdma names no device toward mac5 "
                            "(rdma: {mac5: rdma_enN}, as ibv_devices names it)"]


def test_ibv_devices_table_is_parsed():
    # ibv_devices' format (libibverbs/examples/device_list.c): "    %-16s\t%016llx" under a two-line head
    text = "    device          \t   node GUID\n    ------          \t----------------\n" \
           "    rdma_en2        \t0000000000000000\n    rdma_en3        \t0000000000000000\n"
    assert parse_ibv_devices(text) == ["rdma_en2", "rdma_en3"]
    assert parse_ibv_devices("") == []


def test_refused_window_with_a_data_link_is_classified_data_link():
    ready = HostResult("mac5", "ready", True)
    assert triage.refusal(Report("preflight", (HostResult("mac4", "data-link", False, "x"), ready))) == "data-link"
    assert triage.refusal(Report("preflight", (HostResult("mac4", "refused", False, "x"), ready))) == "refused"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_hosts_on_loopback(late):
    """Two 'hosts' on this machine's loopback, each listening on its port and dialling the other's;
    the second starts ``late`` seconds after the first: (each one's links facts, the monotonic time
    each ended, the start time)."""
    a, b = free_port(), free_port()
    out, ended = {}, {}

    def host(name, own, peer, delay):
        time.sleep(delay)
        out[name] = links_facts({"listen": [["127.0.0.1", own]], "connect": [["other", "127.0.0.1", peer]],
                                 "expect": 1, "wait": 5, "timeout": 2})
        ended[name] = time.monotonic()
    threads = [threading.Thread(target=host, args=("a", a, b, 0)), threading.Thread(target=host, args=("b", b, a, late))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, ended, t0


def test_links_probe_listens_and_dials_for_real():
    """The second host starts half a second late, so the first's refused dials are retried until it is up."""
    out, _, t0 = two_hosts_on_loopback(0.5)
    assert time.monotonic() - t0 < 3  # both ends came through: nobody waited for the deadline
    assert out["a"]["connect"][0]["ok"] and out["a"]["connect"][0]["tries"] > 1
    assert out["b"]["connect"][0]["ok"] and out["a"]["accepted"] == out["b"]["accepted"] == 1


def test_links_probe_ends_soon_after_the_late_peer_is_up():
    """Preflight waits for the slowest host's check: a host whose peer comes up late dials it again at
    a fine grain and stops listening soon after, not a tenth of a second later (it ran in every
    preflight). The early host retries every few hundredths of a second, and both end close after
    the late one started."""
    out, ended, t0 = two_hosts_on_loopback(0.4)
    assert out["a"]["connect"][0]["ok"] and out["b"]["connect"][0]["ok"]
    assert out["a"]["connect"][0]["tries"] >= 8  # 0.4 s of refusals: one dial every 0.02 s, not every 0.1 s
    assert max(ended.values()) - (t0 + 0.4) < 0.35


def test_links_probe_reports_refused_and_in_use():
    closed = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        got = links_facts({"listen": [["127.0.0.1", port]], "connect": [["x", "127.0.0.1", closed]],
                           "expect": 1, "wait": 0.5, "timeout": 1})
    assert got["listen"] == [{"ip": "127.0.0.1", "port": port, "ok": False, "in_use": True,
                              "error": "Address already in use"}]
    assert not got["connect"][0]["ok"] and got["connect"][0]["error"] == "Connection refused"
    assert got["connect"][0]["tries"] > 1  # retried until the deadline


def test_a_ring_that_cannot_form_at_runtime_is_a_data_link():
    """Without preflight (--skip-preflight), mlx's own ring error is recognised: the message a rank
    printed in the lab when its data_ip was not its own (tests/lab/test_datapath.py)."""
    from .test_window_logic import STARTED, ev, outcome
    bind = ev("mac5", "error", kind="runtime", msg="RuntimeError: [ring] Couldn't bind socket (error: 99)")
    verdict, why = triage.classify(outcome(STARTED + [bind], code=1), False)
    assert verdict == "data-link" and "mac5: RuntimeError: [ring] Couldn't bind socket" in why
    other = ev("mac5", "error", kind="runtime", msg="RuntimeError: [ring] connection to a peer was lost")
    assert triage.classify(outcome(STARTED + [other], code=1), False)[0] == "runtime-crash"
