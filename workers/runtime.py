"""Starting Ray (embedded and local by default, or joining a cluster at an address) and
reading what its nodes can hold."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# Ray 2.59+ turns token authentication on for local clusters unless RAY_AUTH_MODE says
# otherwise, and every process of a cluster must use the same mode. We keep Ray's secure
# choice but say it explicitly, before Ray is imported (Ray caches the mode at import; its
# local processes inherit the variable). A user who joins a cluster without authentication
# sets RAY_AUTH_MODE=disabled. Ray itself is imported only where it is used (workers.pool,
# workers.actor), so that importing this package stays cheap.
AUTH_MODE_ENV = "RAY_AUTH_MODE"
DEFAULT_AUTH_MODE = "token"
_STALE_AUTH_MODE = "ray" in sys.modules and AUTH_MODE_ENV not in os.environ
os.environ.setdefault(AUTH_MODE_ENV, DEFAULT_AUTH_MODE)

logger = logging.getLogger(__name__)

ADDRESS_ENV = "RAY_ADDRESS"


def start_ray(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Start (or join) Ray unless it runs already; returns whether this call started it.

    Without an address (argument or RAY_ADDRESS), Ray starts embedded in this process with
    `num_cpus` (default: this machine's cores) and no dashboard. With one, it joins that
    cluster, whose own resources then apply.
    """
    import ray  # after the auth mode is set

    if ray.is_initialized():
        return False
    if _STALE_AUTH_MODE:
        # Ray was imported (elsewhere) before the mode was set here: refresh its cached
        # config, as Ray does itself when it turns token auth on, or this driver would not
        # send the token that the processes it starts expect.
        from ray._raylet import Config

        Config.initialize("")
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:
        logger.info("joining the Ray cluster at %s", address)
        ray.init(address=address)
    else:
        num_cpus = num_cpus or os.cpu_count() or 1
        logger.info("starting a local Ray runtime with %d CPUs", num_cpus)
        ray.init(num_cpus=num_cpus, include_dashboard=False)
    return True


@contextmanager
def ray_runtime(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the duration of a block; shut down afterwards only if this block started it."""
    import ray

    started = start_ray(address, num_cpus=num_cpus)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True, slots=True)
class NodeSlots:
    """How many workers one alive node of the cluster can hold at once, by its total resources."""

    node_id: str
    address: str
    slots: int


def node_slots(
    need: Mapping[str, float], nodes: Sequence[Mapping[str, Any]] | None = None
) -> list[NodeSlots]:
    """Workers asking `need` each (Ray resource names: {"CPU": 1, "GPU": 1}) per alive node.

    `nodes` are `ray.nodes()` records (default: asked now). Totals, not what is free: this says
    what can ever be placed on these nodes, whatever else runs on them now.
    """
    if nodes is None:
        import ray

        nodes = ray.nodes()
    out = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        total = node.get("Resources", {})
        # the tiny epsilon: Ray keeps fractional resources as floats
        fits = [math.floor(total.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
        out.append(
            NodeSlots(str(node["NodeID"]), str(node["NodeManagerAddress"]), min(fits, default=0))
        )
    return out
