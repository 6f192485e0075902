"""Run the job's heavy, independent steps as Ray tasks when the job runs on Ray.

Inside a Ray job (submitted through the Jobs API, or a KubeRay RayJob) `RAY_ADDRESS` names the
cluster; the job then connects and evaluates the full and the pruned model side by side as two
tasks, each with half of the cluster's CPUs (or a GPU each where the cluster has them). In-process
runs (`tierserve prune`) keep everything in one process. `TIERSERVE_RAY_TASKS=off` forces that.

The models travel to the tasks through Ray's object store (in-memory objects this job created,
never a file from outside), and the results come back as plain numpy arrays.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["ray_active", "run_side_by_side"]


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


def _call(fn: Callable, args: tuple, threads: int) -> Any:
    import torch

    torch.set_num_threads(max(1, threads))
    return fn(*args)


def run_side_by_side(fn: Callable, calls: Sequence[tuple]) -> tuple[list, str]:
    """[fn(*args) for args in calls], as parallel Ray tasks if Ray is active.

    Returns (results, where): where is "ray" or "local".
    """
    if len(calls) < 2 or not ray_active():
        return [fn(*args) for args in calls], "local"
    import ray

    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0)) >= len(calls)
    cpus = max(1.0, float(total.get("CPU", 1)) // len(calls))
    task = ray.remote(_call).options(num_cpus=cpus, num_gpus=1 if gpus else 0)
    refs = [task.remote(fn, args, int(cpus)) for args in calls]
    return ray.get(refs), "ray"
