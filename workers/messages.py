"""How the pool speaks of its workers: the exception a failed start raised inside Ray, an error
made short for a log line, where the workers run and what a node can hold."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ray.exceptions import RayActorError

from workers.actor import ActorInfo
from workers.runtime import NodeSlots

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(: |$)")


def raised_in_worker(exc: RayActorError) -> str:
    """The exception line(s) at the end of the traceback Ray reports for a failed __init__."""
    lines = _ANSI.sub("", str(exc)).rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if _EXCEPTION_LINE.match(lines[i]):
            return "\n".join(lines[i:]).strip()
    return lines[-1].strip() if lines else type(exc).__name__


def short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(_ANSI.sub("", str(exc)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def placement(infos: Sequence[ActorInfo]) -> str:
    """Where the workers run, one entry per node: `10.0.0.2 (node 3f2a9c1e): 4 (pids ...)`."""
    by_node: dict[tuple[str, str], list[int]] = {}
    for info in infos:
        by_node.setdefault((info.node, info.node_id[:8]), []).append(info.pid)
    return "; ".join(
        f"{ip} (node {node}): {len(pids)} (pids {', '.join(map(str, pids))})"
        for (ip, node), pids in sorted(by_node.items())
    )


def capacity_text(slots: Sequence[NodeSlots]) -> str:
    return ", ".join(f"{s.address} (node {s.node_id[:8]}): {s.slots}" for s in slots) or "no nodes"
