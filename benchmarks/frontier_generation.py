"""The savings frontier for text generation: SmolLM2-135M-Instruct against its own
pruned copy, cascade on the pruned answer's mean token log-probability.

    python benchmarks/serving.py --frontier --tasks generation [--distill-steps N]
    python benchmarks/frontier_generation.py [--model DIR] [--distill-steps N] [--no-write]

1. The pruned tier: a saved pruned artifact (`--model`; by default the distilled 25%-per-token-
   FLOPs depth-pruned model that `benchmarks/decoder.py --distill-steps N --save-models` leaves
   under runs/decoder/), else SmolLM2 pruned here (whole layers, Block Influence, 25% of
   per-token FLOPs, no LS rescale, as decoder.json's rows), distilled for `--distill-steps`
   when given. `meta.pruned_tier` says which was served.
2. Both tiers answer the prompted task (examples/data/lm: "games or science?") greedily, as the
   router's `/v1/generate` does (`lm.generate_batch`): the answer, its mean token log-probability
   (the cascade's confidence, serving/policy.py) and its token counts.
3. Agreement = the pruned answer names the same choice as full's (`lm.answers_agree`, as the
   decoder benchmark and the router's shadow judge it).
4. The cost ratio: both models generate the same prompts for the same number of tokens, in
   interleaved rounds, clamped to the physical range against the FLOPs ideal (costratio.py);
   a request costs ratio x (its prompt + pruned answer tokens) on pruned and, when escalated,
   (prompt + full answer tokens) on full, against full alone (prompt + full answer tokens).
5. The threshold is calibrated on the VALIDATION prompts (Learn-then-Test with `--delta`, the
   job's `calibration_lm`); the sweep and the calibrated point are measured on the held-out TEST
   prompts; a split at the calibrated point's agreement; `frontier_bootstrap`.

`generation_frontier` is the pure core (arrays in, rows out).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "lm" / "lm.jsonl.gz"
DEFAULT_MODEL = ROOT / "runs" / "decoder" / "layers-0.25-distilled"
MAX_NEW_TOKENS = 8  # the task's answers are one word; the router's cascade is calibrated on this
LEVEL = 0.25  # per-token FLOPs removed (the decoder benchmark's row)
RATIO_PROMPTS = 4  # held-out prompts both tiers generate in each timing round

__all__ = ["GenOutcome", "cascade_savings", "generation_frontier", "run_generation"]


@dataclass(frozen=True)
class GenOutcome:
    """Per held-out request: pruned confidence, agreement with full, and token counts."""

    conf: np.ndarray  # (n,) pruned mean token log-prob
    agree: np.ndarray  # (n,) bool
    tokens_pruned: np.ndarray  # (n,) prompt + pruned answer tokens
    tokens_full: np.ndarray  # (n,) prompt + full answer tokens

    def take(self, idx) -> GenOutcome:
        return GenOutcome(self.conf[idx], self.agree[idx], self.tokens_pruned[idx],
                          self.tokens_full[idx])


def _row(policy, threshold, agreement, savings, calibrated, n) -> dict:
    return {"task": "generation", "policy": policy,
            "threshold": None if threshold is None else float(threshold),
            "escalate_top_m": None, "agreement": float(agreement), "savings": float(savings),
            "calibrated": bool(calibrated), "n": int(n)}


def cascade_savings(o: GenOutcome, threshold: float, ratio: float) -> tuple[float, float]:
    """(agreement, savings) of the cascade: every request is answered by pruned first; those
    with conf < threshold are escalated to full (whole answer), which then also pays."""
    from tierserve.pruning.cascade import cascade_outcome

    agreement, _ = cascade_outcome(o.conf, o.agree, threshold)
    esc = o.conf < threshold
    full_alone = float(o.tokens_full.sum())
    cost = ratio * float(o.tokens_pruned.sum()) + float(o.tokens_full[esc].sum())
    return agreement, 1.0 - cost / full_alone if full_alone else 0.0


def _split(o: GenOutcome, agreement: float, ratio: float) -> tuple[float, float]:
    """A random split sending a share s to pruned alone, s chosen to reach `agreement`."""
    p_agree = float(np.mean(o.agree))
    share = 1.0 if p_agree >= agreement else (1.0 - agreement) / (1.0 - p_agree)
    per_req = 1.0 - ratio * float(o.tokens_pruned.sum()) / float(o.tokens_full.sum())
    return 1.0 - share * (1.0 - p_agree), share * per_req


def generation_frontier(val_conf, val_agree, test: GenOutcome, ratio: float, target: float,
                        delta: float | None, boot: int = 1000,
                        seed: int = 0) -> tuple[list[dict], dict, dict]:
    """Calibrate on validation (conf, agree); sweep thresholds (validation deciles and +inf) on
    `test`; the calibrated point; a split at its agreement; the bootstrap share of resampled
    test sets meeting `target` at the calibrated threshold. Raises `CalibrationTooSmall` when
    the validation set cannot support (target, delta)."""
    from tierserve.pruning.cascade import choose_threshold

    vc = np.asarray(val_conf, dtype=np.float64)
    cal = choose_threshold(vc, np.asarray(val_agree, bool), target, delta,
                           field="validation prompts")
    n = len(test.conf)
    sweep = sorted(set(np.quantile(vc, np.linspace(0.0, 1.0, 11)).tolist()) | {np.inf})
    rows = [_row("cascade", t, *cascade_savings(test, t, ratio), False, n) for t in sweep]
    a_cal, s_cal = cascade_savings(test, cal.threshold, ratio)
    rows.append(_row("cascade", cal.threshold, a_cal, s_cal, True, n))
    rows.append(_row("split", None, *_split(test, a_cal, ratio), False, n))
    rng = np.random.default_rng(seed)
    hits = sum(cascade_savings(test.take(rng.integers(0, n, n)), cal.threshold, ratio)[0]
               >= target for _ in range(boot))
    bootstrap = {"task": "generation", "target": target, "delta": delta, "resamples": boot,
                 "share_meeting_target": hits / boot if boot else None,
                 "calibrated_threshold": cal.threshold, "escalate_top_m": None}
    return rows, bootstrap, cal.to_dict()


# -- measuring the two tiers ------------------------------------------------------------------------
def answers(full, pruned, prompts: Sequence[str], choices: Sequence[str]) -> GenOutcome:
    """Both tiers' greedy answers to `prompts` -> the per-request outcome arrays."""
    from tierserve.pruning.lm import answers_agree, generate_batch

    f = generate_batch(full, list(prompts), max_new_tokens=MAX_NEW_TOKENS)
    p = generate_batch(pruned, list(prompts), max_new_tokens=MAX_NEW_TOKENS)
    return GenOutcome(np.array([g.mean_logprob for g in p]),
                      np.array([answers_agree(a.text, b.text, choices) for a, b in zip(p, f, strict=True)]),
                      np.array([g.prompt_tokens + g.tokens for g in p], dtype=np.float64),
                      np.array([g.prompt_tokens + g.tokens for g in f], dtype=np.float64))


def generation_cost_ratio(full, pruned, prompts: Sequence[str], rounds: int):
    """Per-token pruned/full cost of generating: both tiers generate `prompts` for exactly
    MAX_NEW_TOKENS tokens (prefill + decode), interleaved rounds, clamped to the physical range."""
    import torch

    from tierserve.pruning.calibration import flops_ratio
    from tierserve.pruning.costratio import interleaved_ratio, physical_range
    from tierserve.pruning.lm import encode_prompts

    enc = encode_prompts(full, list(prompts), chat=True)
    pad = full.processor.pad_token_id

    def run(tm):
        @torch.inference_mode()
        def go():
            tm.model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MAX_NEW_TOKENS,
                              do_sample=False, pad_token_id=pad)
        return go
    lo, hi = physical_range(flops_ratio(full, pruned))
    return interleaved_ratio(run(full), run(pruned), rounds, lo, hi)


def pruned_tier(full, model: Path | None, distill_steps: int):
    """(pruned TaskModel, description): the saved artifact when there is one, else prune here."""
    from tierserve.pruning.artifact import load_pruned, read_manifest

    if model is not None and (model / "pruning.json").is_file():
        manifest = read_manifest(model) or {}
        return load_pruned(model, "text-generation", max_length=128), {
            "source": str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model),
            **(manifest.get("extra_benchmark") or {})}
    import decoder  # benchmarks/decoder.py (this folder is on sys.path)

    s = replace(decoder.Settings(), levels=(LEVEL,), rescale=False)  # as decoder.json's rows
    res = decoder.prune_one(full, s, ("layers",), LEVEL, distill_steps)
    return res["model"], {"source": "pruned in this run", **res["info"]}


def run_generation(args) -> tuple[list[dict], dict, dict]:
    """`benchmarks/frontier.py --tasks generation`: (rows, bootstrap, meta)."""
    import torch

    from tierserve.pruning.cascade import CalibrationTooSmall
    from tierserve.pruning.gguf import smollm2_dir
    from tierserve.pruning.lm import load_lm_data, task_choices
    from tierserve.pruning.tasks import load_task_model

    torch.set_num_threads(2)
    full = load_task_model(smollm2_dir(), "text-generation", max_length=128)
    model = getattr(args, "gen_model", None)
    model = Path(model) if model else (DEFAULT_MODEL if DEFAULT_MODEL.is_dir() else None)
    pruned, info = pruned_tier(full, model, args.distill_steps)
    val = load_lm_data(DATA, split="validation")
    test = load_lm_data(DATA, split="test")
    limit = getattr(args, "gen_limit", None)
    vp, tp = val.prompts[:limit], test.prompts[:limit]
    choices = task_choices(val.answers + test.answers)
    v, t = answers(full, pruned, vp, choices), answers(full, pruned, tp, choices)
    ratio = generation_cost_ratio(full, pruned, tp[:RATIO_PROMPTS], args.rounds)
    print(f"generation cost ratio {ratio.ratio:.3f} ({ratio.source}; measured {ratio.measured}, "
          f"CI {ratio.ci}, ideal {ratio.ideal})", file=sys.stderr)
    target, delta, refused = args.target, args.delta, None
    try:
        rows, boot, cal = generation_frontier(v.conf, v.agree, t, ratio.ratio, target, delta)
    except CalibrationTooSmall as err:  # 64 validation prompts cannot guarantee 0.99
        refused, target = str(err), getattr(args, "gen_target", None) or 0.9
        rows, boot, cal = generation_frontier(v.conf, v.agree, t, ratio.ratio, target, delta)
    meta = {"model": "SmolLM2-135M-Instruct", "pruned_tier": info,
            "generation_flops_removed": LEVEL, "confidence": "mean_logprob",
            "max_new_tokens": MAX_NEW_TOKENS, "validation_n": len(vp), "test_n": len(tp),
            "calibration": cal, "generation_target": target,
            "refused_at_requested_target": refused, "cost_ratio": ratio.to_dict(),
            "cost_per_request": "ratio x (prompt + pruned answer tokens) + escalated x "
                                "(prompt + full answer tokens), vs full alone",
            "pruned_agreement_test": float(np.mean(t.agree)),
            "pruned_agreement_validation": float(np.mean(v.agree))}
    return rows, boot, meta


def main(argv: list[str] | None = None) -> int:
    from harness import RESULT, merge_results, table  # the result file, shared with frontier.py

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", dest="gen_model", default=None, help="a saved pruned artifact")
    ap.add_argument("--distill-steps", type=int, default=0)
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--gen-target", type=float, default=0.9,
                    help="used when the validation prompts cannot support --target")
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gen-limit", type=int, default=None, help="prompts per split (smoke runs)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--result", default=str(RESULT), help="JSON to merge the rows into")
    args = ap.parse_args(argv)
    rows, boot, meta = run_generation(args)
    print(table(rows))
    print(boot)
    if not args.no_write:
        merge_results(rows, [boot], {"generation": meta}, Path(args.result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
