"""benchmarks/frontier.py's pruned tier: the JOB's distillation stage (not a bare loop), then INT8
last (issue 15, item 3). Real MiniLM, pruned to 50% FLOPs on a few Debian texts, 2 distillation
steps: cheap, it checks the wiring, not the quality."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("frontier", ROOT / "benchmarks" / "frontier.py")
frontier = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(frontier)


def test_no_budget_no_distillation():
    assert frontier.distillation(0, None, SimpleNamespace(texts=["a"])) == (None, None)


def test_distilled_then_int8(minilm_path, debian_retrieval):
    from tierserve.pruning.engine import PruneConfig, prune
    from tierserve.pruning.quantize import is_quantized
    from tierserve.pruning.structure import Budget
    from tierserve.pruning.tasks import load_task_model

    full = load_task_model(minilm_path, "embedding")
    cal = debian_retrieval["calibration"]
    texts = list(cal.queries[:24]) + list(cal.corpus[:24])
    dcfg, drun = frontier.distillation(2, None, SimpleNamespace(texts=texts))
    assert dcfg.steps == 2 and dcfg.patience == 0 and drun.texts.val_docs  # no early stop; 10% held back
    result = prune(full, texts[:16], PruneConfig(criterion="activation", rescale=True,
                                                 budget=Budget(kind="flops", target=0.5),
                                                 distill=dcfg), distill_run=drun)
    section = result.report["distillation"]
    assert section["steps"] == 2 and section["curve"], section  # the stage's own report
    served = frontier._serve_model(result, int8=True)
    assert is_quantized(served.model) and not is_quantized(result.model.model)
    assert frontier._serve_model(result, int8=False) is result.model
