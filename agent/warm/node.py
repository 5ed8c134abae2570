"""What the warm part uses of the node, handed to it explicitly (it reads nothing of the
compute core): the hypervisor and storage, the resource claims, and a few calls about
instances that the compute core answers."""
import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Activity:
    """What the filler needs to know of the node's jobs: how many were ever accepted (a job
    that came and went still counts) and whether one runs now."""

    accepted: int
    running: bool


@dataclasses.dataclass(frozen=True)
class Node:
    """The parts and calls the warm part works with.

    ``claim(uuid, vcpus, memory_mb, disk_gb)``, ``reserve(uuid, disk_gb, memory_mb=0)`` and
    ``release(uuid)`` are the resource tracker's; ``attempt(uuid, what, fn, *args)`` runs a
    clean-up step and logs its failure; ``activity()`` -> Activity; ``wait_ready(inst,
    timeout)`` waits for an instance's ready event; ``ready(inst, when, cause)`` makes a
    restored instance ready once it is itself.
    """

    driver: Any
    storage: Any
    seeds: Any                      # agent.storage.seeds.SeedDisks, or None
    dirs: Any                       # agent.instancedir.InstanceDirs
    runtime: Any                    # sleep, workqueue
    claim: Callable[..., None]
    reserve: Callable[..., None]
    release: Callable[[str], None]
    attempt: Callable[..., bool]
    activity: Callable[[], Activity]
    wait_ready: Callable[[Any, float], bool]
    ready: Callable[[Any, float, str], None]
