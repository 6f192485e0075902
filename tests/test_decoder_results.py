"""benchmarks/decoder.py's result file (issue 13): a run merges into decoder.json without losing
earlier rows, and distilled rows render side by side with their undistilled twins. Pure: no model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "decoder.py"
_spec = importlib.util.spec_from_file_location("bench_decoder", _PATH)
decoder = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = decoder  # dataclasses look their module up while defined
_spec.loader.exec_module(decoder)


def _distilled(structures: str, steps: int, ppl_ratio: float, acc_ratio: float) -> dict:
    base = {"structures": structures, "per_token_flops_removed": 0.233, "distill_steps": 0,
            "perplexity_ratio": 2.72, "task_accuracy_ratio": 0.31, "next_token_agreement": 0.45}
    return {**base, "distill_steps": steps, "perplexity_ratio": ppl_ratio,
            "task_accuracy_ratio": acc_ratio, "next_token_agreement": 0.6,
            "distill_seconds": 300.0, "device": "cpu", "baseline": base,
            "goals": {"perplexity_ratio<=1.3": ppl_ratio <= 1.3,
                      "task_accuracy_ratio>=0.9": acc_ratio >= 0.9}}


def test_merge_keeps_earlier_rows_and_replaces_distilled_twins(tmp_path):
    out = tmp_path / "decoder.json"
    old = {"rows": [{"structures": "layers", "flops_removed": 0.25, "ppl_pruned": 98.0},
                    {"structures": "layers", "flops_removed": 0.5, "ppl_pruned": 596.0}],
           "distill_rows": [_distilled("layers", 10, 2.0, 0.5),
                            _distilled("heads+neurons", 10, 1.9, 0.4)],
           "header": "quiet run", "score_seconds": 9.3}
    out.write_text(json.dumps(old))
    new = {"rows": [{"structures": "layers", "flops_removed": 0.25, "ppl_pruned": 97.0},
                    {"structures": "heads+neurons", "flops_removed": 0.25, "ppl_pruned": 74.7}],
           "distill_rows": [_distilled("layers", 120, 1.25, 0.94)], "header": "busy run"}
    merged = decoder.merge_previous(new, out)
    keys = [(r["structures"], r["flops_removed"], r["ppl_pruned"]) for r in merged["rows"]]
    assert keys == [("layers", 0.25, 98.0), ("layers", 0.5, 596.0),
                    ("heads+neurons", 0.25, 74.7)]  # earlier (quiet) rows win, new ones added
    by = {r["structures"]: r["distill_steps"] for r in merged["distill_rows"]}
    assert by == {"heads+neurons": 10, "layers": 120}
    assert merged["header"] == "busy run" and merged["previous_headers"] == ["quiet run"]
    assert merged["score_seconds"] == 9.3
    assert decoder.merge_previous(new, tmp_path / "absent.json") is new


def test_markdown_shows_distilled_next_to_undistilled_with_goals():
    rows = [_distilled("layers", 120, 1.25, 0.94), _distilled("heads+neurons", 40, 1.6, 0.5)]
    lines = decoder._distill_markdown(rows)
    layers = next(ln for ln in lines if ln.startswith("| layers"))
    assert "| 120 |" in layers and "2.72 -> 1.25" in layers and "0.31 -> 0.94" in layers
    assert "perplexity_ratio<=1.3: met" in layers and "task_accuracy_ratio>=0.9: met" in layers
    width = next(ln for ln in lines if ln.startswith("| heads+neurons"))
    assert "perplexity_ratio<=1.3: missed" in width
    assert decoder._distill_markdown([]) == []
