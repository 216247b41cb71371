"""The JSON hostfile mlx.launch reads, per backend, in the format ``mlx.distributed_config`` writes
(``mlx/_distributed_utils/common.py``, ``Hostfile.to_json``; read back by ``Hostfile.from_file``).

- ring: the list form, ``[{"ssh": name, "ips": [data_ip]}, ...]``: the ssh alias apart from the
  Thunderbolt address the ring binds.
- jaccl: the mapping form, ``{"backend": "jaccl", "envs": [], "hosts": [{"ssh", "ips", "rdma"}]}``,
  where host i's ``rdma`` lists, for every rank j, the RDMA device i reaches j through (``null`` for
  itself). The devices come from the inventory's ``rdma: {peer: rdma_enN}`` per host: which port
  cable leads to which peer is the machine's wiring, not something ``ibv_devices`` can tell.
"""
from ..profiles import BACKENDS


class HostfileError(ValueError):
    """The inventory does not say enough to write the backend's hostfile; names host and field."""


def hostfile(hosts, backend):
    """The hostfile document for ``hosts`` (rank order) and ``backend``."""
    if backend not in BACKENDS:
        raise HostfileError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "ring":
        return [{"ssh": h.ssh_name, "ips": [h.data_ip]} for h in hosts]
    return {"backend": "jaccl", "envs": [],
            "hosts": [{"ssh": h.ssh_name, "ips": [h.data_ip], "rdma": _rdma_row(h, hosts)} for h in hosts]}


def _rdma_row(host, hosts):
    devices = dict(host.rdma)
    row = []
    for peer in hosts:
        if peer.name == host.name:
            row.append(None)
        elif peer.name in devices:
            row.append(devices[peer.name])
        else:
            raise HostfileError(f"host {host.name}: rdma: no device toward {peer.name}; the jaccl backend "
                                f"needs `rdma: {{{peer.name}: rdma_enN}}` in the inventory (see ibv_devices "
                                f"and mlx.distributed_config --backend jaccl)")
    return row
