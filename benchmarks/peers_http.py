"""The race over HTTP: Infinity's server against `tierserve run`, OpenAI `embeddings` calls.

    python benchmarks/peers.py --http        # per-call rows, then these `http` rows

Both servers run on this machine at once, each asked alone in turn (rounds interleave: Infinity,
then tierserve's full tier, then its pruned tier, then again). Infinity: its optimum (ONNX
Runtime) engine, one intra-op thread (peer_worker.infinity_server_command). tierserve:
`tierserve run examples/minilm-pass.yaml` (the job, its gates, then both tiers and the router on
local Ray Serve, each tier with cpus 1, so one thread); a tier is chosen with `X-Tier`.

Load: N closed-loop clients (1, 16, 64), each posting one short query per request, for
`seconds` per round; a request's latency is its wall time at the client; `rps` counts the
requests that finished inside the window. Rows carry the per-call fields plus `clients`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

__all__ = ["http_rows"]

ROOT = Path(__file__).resolve().parents[1]
QUERY = "python library for parsing yaml files"
INFINITY_PORT, TIERSERVE_PORT = 7997, 8797


def _wait(url: str, seconds: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}) before answering {url}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} did not answer {url} within {seconds:.0f} s")


def _start_infinity(peers_python: str, threads: int) -> subprocess.Popen:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import peer_worker

    model = peer_worker.prepare_onnx_dir(peer_worker.default_model_dir())
    cmd = peer_worker.infinity_server_command(peers_python, model, INFINITY_PORT, threads)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _wait(f"http://127.0.0.1:{INFINITY_PORT}/health", 180, "Infinity's server", proc)
    return proc


def _start_tierserve(out: Path) -> subprocess.Popen:
    """`tierserve run` on the pass example; its own replay first, then it serves."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tierserve.cli", "run", str(ROOT / "examples/minilm-pass.yaml"),
           "--out", str(out), "--requests", "20", "--port", str(TIERSERVE_PORT)]
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    _wait(f"http://127.0.0.1:{TIERSERVE_PORT}/healthz", 1800, "tierserve run", proc)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


async def _load(url: str, body: dict, headers: dict, clients: int, seconds: float) -> list[float]:
    """Closed-loop clients for `seconds`; latencies of requests finished inside the window."""
    done: list[float] = []
    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def one() -> None:
            while time.monotonic() < end:
                t0 = time.monotonic()
                r = await client.post(url, json=body, headers=headers)
                if r.status_code == 200 and time.monotonic() <= end:
                    done.append(time.monotonic() - t0)
        await asyncio.gather(*(one() for _ in range(clients)))
    return done


def http_rows(peers_python: str, quality: dict, out: Path, *, clients=(1, 16, 64),
              seconds: float = 10.0, rounds: int = 2, threads: int = 1) -> list[dict]:
    out.parent.mkdir(parents=True, exist_ok=True)
    servers = [_start_infinity(peers_python, threads)]
    try:
        servers.append(_start_tierserve(out))
        targets = {  # label: (url, body, headers)
            "infinity-optimum http": (f"http://127.0.0.1:{INFINITY_PORT}/embeddings",
                                      {"model": "minilm", "input": [QUERY]}, {}),
            "tierserve http full": (f"http://127.0.0.1:{TIERSERVE_PORT}/v1/embeddings",
                                    {"model": "minilm-pass", "input": [QUERY]}, {"X-Tier": "full"}),
            "tierserve http pruned": (f"http://127.0.0.1:{TIERSERVE_PORT}/v1/embeddings",
                                      {"model": "minilm-pass", "input": [QUERY]},
                                      {"X-Tier": "pruned"}),
        }
        lat: dict[tuple[str, int], list[float]] = {}
        for n in clients:
            for url, body, headers in targets.values():  # warm-up
                asyncio.run(_load(url, body, headers, n, 2.0))
            for _ in range(rounds):
                for label, (url, body, headers) in targets.items():
                    lat.setdefault((label, n), []).extend(
                        asyncio.run(_load(url, body, headers, n, seconds)))
            print(f"http: {n} clients done", file=sys.stderr)
    finally:
        for proc in servers:
            _stop(proc)
    import json

    report = json.loads((out / "report.json").read_text())
    kept = {"infinity-optimum http": quality.get("infinity-optimum"),
            "tierserve http full": quality.get("tierserve ort full"),
            "tierserve http pruned": report["metrics"]["quality_kept"].get("ndcg@10")}
    return _rows(lat, kept, seconds * rounds, threads)


def _rows(lat, quality, window_s: float, threads: int) -> list[dict]:
    rows = []
    for (label, n), xs in lat.items():
        peer = lat.get(("infinity-optimum http", n))
        p50 = statistics.median(xs) if xs else float("nan")
        variant = "pruned" if label.endswith("pruned") else None
        rows.append({
            "engine": label, "model": "all-MiniLM-L6-v2" + (" minilm-pass pruned" if variant
                                                              else ""),
            "batch": 1, "threads": threads, "clients": n, "p50_ms": p50 * 1e3,
            "rps": len(xs) / window_s, "quality_kept": quality.get(label),
            "vs_best_peer": statistics.median(peer) / p50 if peer and xs else None,
        })
    return rows
