"""The job runner: claims searches and checkpoint exports from the queue and works them.

Data flows service -> DB queue -> this runner -> Ray actors (or in process) -> `optishear`.
`optishear worker` runs `QueueRunner.run` until stopped; `optishear serve` starts one beside
the API for the embedded SQLite database.
"""

from service.runner.loop import QueueRunner

__all__ = ["QueueRunner"]
