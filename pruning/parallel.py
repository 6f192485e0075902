"""Run the job's heavy, independent steps as Ray tasks when the job runs on Ray.

Inside a Ray job (submitted through the Jobs API, or a KubeRay RayJob) `RAY_ADDRESS` names the
cluster; the job then connects and evaluates the full and the pruned model side by side as two
tasks. Each task asks for what the cluster has FREE now (`ray.available_resources()`: served
tiers may hold most CPUs), or for `TIERSERVE_EVAL_CPUS` CPUs when that is set; a GPU each where
that many are free. The resources are reserved first with a placement group, waited for at most
`TIERSERVE_EVAL_WAIT_S` seconds (default 60): when the cluster is full, or the reservation does
not come in time, the evaluations run in this process instead, and the reason is returned (and
logged) -- a job never waits forever on resources. In-process runs (`tierserve prune`) keep
everything in one process. `TIERSERVE_RAY_TASKS=off` forces that.

The models travel to the tasks through Ray's object store (in-memory objects this job created,
never a file from outside), and the results come back as plain numpy arrays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["ray_active", "run_side_by_side", "task_resources"]

log = logging.getLogger(__name__)
WAIT_S = 60.0


def ray_active() -> bool:
    """True if this process is (or can become) a driver of a Ray cluster."""
    if os.environ.get("TIERSERVE_RAY_TASKS", "auto").lower() in ("off", "0", "false"):
        return False
    try:
        import ray
    except ImportError:
        return False
    if ray.is_initialized():
        return True
    if not os.environ.get("RAY_ADDRESS"):
        return False
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    return True


def task_resources(available: Mapping[str, float], n: int,
                   wanted_cpus: float | None = None) -> tuple[float, int] | str:
    """(CPUs, GPUs) per task for `n` tasks from what is free, or why they cannot run (pure)."""
    free_cpus, free_gpus = float(available.get("CPU", 0.0)), float(available.get("GPU", 0.0))
    gpus = 1 if free_gpus >= n else 0
    if wanted_cpus is not None:
        if wanted_cpus * n > free_cpus + 1e-9:
            return (f"cluster full: {n} tasks x {wanted_cpus:g} CPU (TIERSERVE_EVAL_CPUS) > "
                    f"{free_cpus:g} CPU available")
        return wanted_cpus, gpus
    cpus = float(int(free_cpus // n))
    if cpus < 1.0:
        return f"cluster full: {free_cpus:g} CPU available for {n} evaluation tasks"
    return cpus, gpus


def _call(fn: Callable, args: tuple, threads: int) -> Any:
    import torch

    torch.set_num_threads(max(1, threads))
    return fn(*args)


def _reserve(n: int, cpus: float, gpus: int, wait_s: float):  # noqa: ANN202 - a PlacementGroup
    """A placement group of `n` bundles, or None when it is not ready within `wait_s`."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    pg = placement_group([bundle] * n, strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=wait_s)
    if ready:
        return pg
    remove_placement_group(pg)
    return None


def _local(fn: Callable, calls: Sequence[tuple], why: str) -> tuple[list, str]:
    log.warning("evaluating in-process: %s", why)
    return [fn(*args) for args in calls], f"local ({why})"


def run_side_by_side(fn: Callable, calls: Sequence[tuple]) -> tuple[list, str]:
    """[fn(*args) for args in calls], as parallel Ray tasks if Ray is active and has room.

    Returns (results, where): where is "ray", "local", or "local (<why the tasks did not run>)".
    """
    if len(calls) < 2 or not ray_active():
        return [fn(*args) for args in calls], "local"
    import ray
    from ray.util.placement_group import remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    env_cpus = os.environ.get("TIERSERVE_EVAL_CPUS")
    per = task_resources(ray.available_resources(), len(calls),
                         float(env_cpus) if env_cpus else None)
    if isinstance(per, str):
        return _local(fn, calls, per)
    cpus, gpus = per
    wait_s = float(os.environ.get("TIERSERVE_EVAL_WAIT_S", WAIT_S))
    pg = _reserve(len(calls), cpus, gpus, wait_s)
    if pg is None:
        return _local(fn, calls, f"{len(calls)} x {cpus:g} CPU not reserved within {wait_s:g}s")
    try:
        refs = [ray.remote(_call).options(
            num_cpus=cpus, num_gpus=gpus, scheduling_strategy=PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=i)).remote(fn, args, int(cpus))
            for i, args in enumerate(calls)]
        return ray.get(refs), "ray"
    finally:
        remove_placement_group(pg)
