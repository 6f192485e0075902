"""Run the job's heavy, independent steps as Ray tasks when the job runs on Ray.

Inside a Ray job (submitted through the Jobs API, or a KubeRay RayJob) `RAY_ADDRESS` names the
cluster; the job then connects and evaluates the full and the pruned model side by side as two
tasks. Each task asks for what the cluster has FREE now (`ray.available_resources()`: served
tiers may hold most CPUs), or for `TIERSERVE_EVAL_CPUS` CPUs when that is set; a GPU each where
that many are free. All the tasks together reserve at most `TIERSERVE_EVAL_CPU_SHARE` (default
0.5) of the cluster's CPUs and GPUs (`ray.cluster_resources()`), so a deploy always finds room;
never less than one task's need. When the share holds fewer tasks than evaluations, fewer tasks
run and each evaluates several models in turn (a 2-CPU cluster: one task of 1 CPU evaluates both).
The resources are reserved first with a placement group named `tierserve-eval`, waited for at most
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

__all__ = ["eval_share", "plan_workers", "ray_active", "run_side_by_side", "task_resources"]

log = logging.getLogger(__name__)
WAIT_S = 60.0
SHARE = 0.5  # of the cluster's CPUs (and GPUs) that evaluation may reserve; the rest is for Serve
PG_NAME = "tierserve-eval"  # what the operator's cpu_holders() names in a deploy's message


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


def eval_share(env: Mapping[str, str] | None = None) -> float:
    """TIERSERVE_EVAL_CPU_SHARE in (0, 1]; a missing or malformed value is the default."""
    text = (os.environ if env is None else env).get("TIERSERVE_EVAL_CPU_SHARE", "")
    try:
        share = float(text) if text else SHARE
    except ValueError:
        share = -1.0
    if not 0.0 < share <= 1.0:
        log.warning("TIERSERVE_EVAL_CPU_SHARE=%r is not in (0, 1]; using %g", text, SHARE)
        return SHARE
    return share


def plan_workers(available: Mapping[str, float], total: Mapping[str, float], n: int,
                 wanted_cpus: float | None = None,
                 share: float = SHARE) -> tuple[int, float, int] | str:
    """(tasks, CPUs, GPUs per task) for `n` evaluations, or why none can run (pure).

    The tasks reserve together at most `share` of the cluster's `total` CPUs and GPUs, never less
    than one task's need (a 1-CPU cluster runs one task), and never more than is `available`.
    """
    need = {"CPU": wanted_cpus or 1.0, "GPU": 1.0}
    budget = {k: min(float(available.get(k, 0.0)), max(share * float(total.get(k, 0.0)), need[k]))
              for k in need}
    for workers in range(n, 0, -1):
        per = task_resources(budget, workers, wanted_cpus)
        if not isinstance(per, str):
            return (workers, *per)
    return (f"cluster full: {float(available.get('CPU', 0.0)):g} CPU available, an evaluation "
            f"task needs {need['CPU']:g}")


def _calls(fn: Callable, calls: Sequence[tuple], threads: int) -> list:
    import torch

    torch.set_num_threads(max(1, threads))
    return [fn(*args) for args in calls]


def _reserve(n: int, cpus: float, gpus: int, wait_s: float):  # noqa: ANN202 - a PlacementGroup
    """A placement group of `n` bundles, or None when it is not ready within `wait_s`."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    pg = placement_group([bundle] * n, strategy="PACK", name=PG_NAME)
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
    plan = plan_workers(ray.available_resources(), ray.cluster_resources(), len(calls),
                        float(env_cpus) if env_cpus else None, eval_share())
    if isinstance(plan, str):
        return _local(fn, calls, plan)
    workers, cpus, gpus = plan
    wait_s = float(os.environ.get("TIERSERVE_EVAL_WAIT_S", WAIT_S))
    pg = _reserve(workers, cpus, gpus, wait_s)
    if pg is None:
        return _local(fn, calls, f"{workers} x {cpus:g} CPU not reserved within {wait_s:g}s")
    log.info("evaluating %d models in %d Ray task(s) of %g CPU", len(calls), workers, cpus)
    try:
        refs = [ray.remote(_calls).options(  # task i evaluates calls i, i + workers, ...
            num_cpus=cpus, num_gpus=gpus, scheduling_strategy=PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=i)).remote(fn, calls[i::workers], int(cpus))
            for i in range(workers)]
        chunks = ray.get(refs)
        return [chunks[i % workers][i // workers] for i in range(len(calls))], "ray"
    finally:
        remove_placement_group(pg)
