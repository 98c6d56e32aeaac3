"""How the learner ranks meet: rank 0 picks the rendezvous, every rank joins it.

On a cluster on loopback (a local run: every rank on this machine) nothing of the learner listens
beyond loopback: the ranks meet through a file rather than a TCP store (whose server listens on
every interface), and gloo's own connections use the loopback interface. On a cluster of several
nodes the ranks meet at rank 0's node address (docs/gpu-clusters.md says how to choose the
interface). A collective that a rank never joins (it died) fails after `timeout_seconds`
instead of torch's default half hour.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

LOOPBACK_INTERFACE = "lo"
"""Linux's loopback interface, for gloo on a local cluster."""


@dataclass(frozen=True)
class Rendezvous:
    """Where the ranks meet: rank 0's node address and a free port on it, and on loopback the
    file they meet through instead (unique to this group)."""

    address: str
    port: int
    file: str | None


def pick_rendezvous() -> Rendezvous:
    """Run on rank 0: its node's address, a free port, and on loopback a fresh file path."""
    import ray

    address = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port = int(sock.getsockname()[1])
    local = ipaddress.ip_address(address).is_loopback
    file = str(Path(tempfile.mkdtemp(prefix="vidrl-rendezvous-")) / "store") if local else None
    return Rendezvous(address, port, file)


def join(rendezvous: Rendezvous, rank: int, world_size: int, backend: str, timeout_seconds: float) -> None:
    """This rank joins the process group `rendezvous` names."""
    if rendezvous.file is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", LOOPBACK_INTERFACE)
        init_method = f"file://{rendezvous.file}"
    else:
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = rendezvous.address, str(rendezvous.port)
        init_method = "env://"
    timeout = timedelta(seconds=timeout_seconds)
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world_size, timeout=timeout
    )
