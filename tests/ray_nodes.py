"""Ray nodes started with `ray start` in sessions of their own, found and killed by session, so
that a test's teardown kills exactly its cluster's processes, never another Ray on this machine."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_of(pid: int) -> int | None:
    """The session of a live process (None once it is gone, or a zombie no one reaps)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, _ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]  # after "pid (comm)"
    return None if state == "Z" else int(session)


def processes(sessions: set[int]) -> dict[int, str]:
    """Our cluster's processes, by session (Ray renames its workers, `ray::ModelActor`)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and session_of(int(entry.name)) in sessions:
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
    return {pid: cmd.decode(errors="replace") for pid, cmd in found.items()}


@dataclass
class Node:
    session: int  # the `ray start` process's session: every process of this node is in it
    node_manager_port: int

    def raylet(self) -> tuple[int, str]:
        """The raylet's pid and Ray node id."""
        for pid, cmd in processes({self.session}).items():
            if f"--node_manager_port={self.node_manager_port}" in cmd and "raylet" in cmd:
                node_id = cmd.split("--node_id=", 1)[1].split()[0]
                return pid, node_id
        raise AssertionError(f"no raylet with node manager port {self.node_manager_port}")


@dataclass
class Cluster:
    address: str
    head: Node
    second: Node
    env: dict[str, str]


def ray_start(args: list[str], env: dict[str, str], node_manager_port: int) -> Node:
    proc = subprocess.Popen(
        [str(RAY), "start", *args, f"--node-manager-port={node_manager_port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its daemons stay in this new session
    )
    output, _ = proc.communicate(timeout=120)
    node = Node(proc.pid, node_manager_port)
    if proc.returncode != 0:
        kill_sessions({node.session})
        raise AssertionError(f"ray start {' '.join(args)} failed:\n{output[-3000:]}")
    return node


def kill_sessions(sessions: set[int]) -> None:
    """SIGKILL every process of these sessions, by pid, until none is left."""
    deadline = time.monotonic() + 30
    while (left := processes(sessions)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    assert not processes(sessions), "processes of the test cluster survived SIGKILL"
