"""Decoder-LM evaluation: perplexity, next-token agreement, a generation-quality task, and latency
measured per token for prefill and for decode separately.

Data (`LMData`, loaded from JSONL/Parquet by `load_lm_data`): rows with a `text` field are scored
for perplexity; rows with `prompt` and `answer` fields form the generation task. One file may hold
both. `split` and the slice field work as for every other task.

Metrics (`evaluate_lm`):
- `perplexity`: exp of the mean next-token negative log-likelihood over every predicted token of
  the texts (corpus-level, token-weighted), each text truncated to `max_length` tokens. Lower is
  better: gates judge it as pruned <= relative x full (gates.py).
- `next_token_agreement` (and its alias `agreement`): the share of text positions where the
  pruned model's top-1 next token equals the full model's. No labels needed.
- `exact_match`: the greedy answer (first line, trimmed, case- and end-punctuation-insensitive)
  equals the reference; `accuracy`: that first line names the reference and none of the
  task's other answers (`answer_correct`).

Latency (`latency_lm`): prefill = one forward over (batch, seq_len) tokens computing only the last
position's logits, reported in ms per prompt token; decode = one cached step per sequence after a
seq_len-token prefill, reported in ms per generated token. Full and pruned are timed in
alternating rounds.
"""

from __future__ import annotations

import math
import re
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .tasks import TaskModel

__all__ = ["Generation", "LMData", "answer_choice", "answer_correct", "answers_agree", "calibration_lm", "encode_prompts", "evaluate_lm", "generate", "generate_batch",
           "generate_scored", "generate_stream", "latency_lm", "load_lm_data", "normalize_answer",
           "perplexity_pass", "task_choices", "task_metrics"]


@dataclass(frozen=True)
class LMData:
    """Texts for perplexity and (prompt, answer) pairs for the generation task."""

    texts: tuple[str, ...]
    prompts: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()
    slices: tuple[str, ...] | None = None  # per text
    ids: tuple[str, ...] | None = None  # texts' then prompts' `id`s, when every row has one

    @property
    def labels(self) -> tuple:
        """No labels: LM calibration is the text itself (pipeline.calibration_examples reads it)."""
        return ()


def load_lm_data(uri: str | Path, text_field: str = "text", slice_field: str | None = None,
                 split: str | None = None, *, prompt_field: str = "prompt",
                 answer_field: str = "answer", limit: int | None = None) -> LMData:
    """Read `uri`'s records of `split`; `limit` keeps the first n texts and n prompts."""
    from .data import DataError, read_records

    rows = [r for r in read_records(uri) if split is None or r.get("split") == split]
    if not rows:
        raise DataError(f"{uri}: no records" + (f" with split {split!r}" if split else ""))
    texts = [r for r in rows if isinstance(r.get(text_field), str) and r[text_field].strip()]
    tasks = [r for r in rows if prompt_field in r]
    bad = [i for i, r in enumerate(tasks) if not isinstance(r.get(answer_field), str | int | float)]
    if bad:
        raise DataError(f"{uri}: record with '{prompt_field}' lacks field '{answer_field}' "
                        f"(task row {bad[0]})")
    if not texts and not tasks:
        raise DataError(f"{uri}: no record has a '{text_field}' or a '{prompt_field}' field")
    texts, tasks = texts[:limit], tasks[:limit]
    slices = None
    if slice_field and texts and all(slice_field in r for r in texts):
        slices = tuple(str(r[slice_field]) for r in texts)
    ids = [r.get("id") for r in texts + tasks]
    return LMData(texts=tuple(r[text_field] for r in texts),
                  prompts=tuple(str(r[prompt_field]) for r in tasks),
                  answers=tuple(str(r[answer_field]) for r in tasks), slices=slices,
                  ids=tuple(str(i) for i in ids) if None not in ids else None)


# -- perplexity and next-token agreement --------------------------------------------------------
@torch.inference_mode()
def perplexity_pass(tm: TaskModel, texts: Sequence[str], batch_size: int = 8
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per text: summed NLL (n,), predicted tokens (n,); per real position: top-1 id (N,) and
    its text index (N,)."""
    nll, count, top1, owner = [], [], [], []
    for start in range(0, len(texts), batch_size):
        batch = tm.batch(list(texts[start:start + batch_size]))
        ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, T)
        logits = tm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        logp = F.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V)
        tok = logp.gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
        real = mask[:, 1:].bool() & mask[:, :-1].bool()  # (B, T-1) target and context real
        nll.append(-(tok * real).sum(1).double().numpy())
        count.append(real.sum(1).numpy())
        m = mask.bool()
        top1.append(logits.argmax(-1)[m].numpy())  # (n_real,)
        rows = torch.arange(ids.shape[0])[:, None].expand_as(ids) + start
        owner.append(rows[m].numpy())
    return (np.concatenate(nll), np.concatenate(count), np.concatenate(top1),
            np.concatenate(owner))


def _ppl(nll: np.ndarray, count: np.ndarray) -> float:
    return float(math.exp(nll.sum() / max(int(count.sum()), 1)))


# -- generation ---------------------------------------------------------------------------------
def encode_prompts(tm: TaskModel, prompts: Sequence[str | list[dict]],
                   chat: bool) -> dict[str, torch.Tensor]:
    """A prompt is a user message, or a whole conversation ([{"role", "content"}, ...])."""
    tok = tm.processor
    if chat and getattr(tok, "chat_template", None):
        prompts = [tok.apply_chat_template(p if isinstance(p, list) else
                                           [{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    side = tok.padding_side
    tok.padding_side = "left"  # generation continues every row from its last real token
    try:
        return dict(tok(list(prompts), padding=True, return_tensors="pt",
                        add_special_tokens=not chat))
    finally:
        tok.padding_side = side


@dataclass(frozen=True)
class Generation:
    """One greedy answer: its text, mean token log-probability (up to and including its EOS),
    and token counts (prompt as the model saw it, chat template included; answer tokens)."""

    text: str
    mean_logprob: float
    prompt_tokens: int
    tokens: int


def _generate_kwargs(tm: TaskModel, max_new_tokens: int, temperature: float = 0.0) -> dict:
    """Greedy by default (what the cascade is calibrated on); temperature > 0 samples."""
    sampling = ({"do_sample": True, "temperature": float(temperature)} if temperature > 0
                else {"do_sample": False})
    return {"max_new_tokens": max_new_tokens, **sampling,
            "pad_token_id": tm.processor.pad_token_id, "output_logits": True,
            "return_dict_in_generate": True}


def _score(tm: TaskModel, enc: dict, out) -> list[Generation]:
    """Generations from `model.generate(..., output_logits=True, return_dict_in_generate=True)`."""
    eos = tm.processor.eos_token_id
    new = out.sequences[:, enc["input_ids"].shape[1]:]  # (B, n)
    logp = torch.stack([F.log_softmax(x.float(), -1) for x in out.logits], 1)  # (B, n, V)
    chosen = logp.gather(-1, new[..., None])[..., 0]  # (B, n)
    done = torch.cumsum((new == eos).int(), 1) - (new == eos).int()  # tokens after an EOS
    live = (done == 0).float()  # (B, n): answer tokens, its EOS included
    scores = ((chosen * live).sum(1) / live.sum(1).clamp(min=1)).tolist()
    texts = tm.processor.batch_decode(new, skip_special_tokens=True)
    prompt = enc["attention_mask"].sum(1).tolist()
    return [Generation(t, float(s), int(p), int(n)) for t, s, p, n in
            zip(texts, scores, prompt, live.sum(1).tolist(), strict=True)]


@torch.inference_mode()
def generate_batch(tm: TaskModel, prompts: Sequence[str | list[dict]], *, max_new_tokens: int = 16,
                   batch_size: int = 8, chat: bool = True,
                   temperature: float = 0.0) -> list[Generation]:
    """Greedy continuations of `prompts` (chat template applied when the tokenizer has one),
    `batch_size` prompts per `generate` call (left-padded)."""
    gens: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        enc = encode_prompts(tm, prompts[start:start + batch_size], chat)
        out = tm.model.generate(**enc, **_generate_kwargs(tm, max_new_tokens, temperature))
        gens.extend(_score(tm, enc, out))
    return gens


def generate_scored(tm: TaskModel, prompts: Sequence[str], *, max_new_tokens: int = 16,
                    batch_size: int = 8, chat: bool = True) -> tuple[list[str], list[float]]:
    """Greedy continuations of `prompts` and each one's mean token log-probability."""
    gens = generate_batch(tm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          chat=chat)
    return [g.text for g in gens], [g.mean_logprob for g in gens]


def generate_stream(tm: TaskModel, prompt: str | list[dict], *, max_new_tokens: int = 16,
                    chat: bool = True, temperature: float = 0.0) -> Iterator[str | Generation]:
    """Greedy generation of one prompt streamed as decoded text pieces (transformers'
    `TextIteratorStreamer`), then the whole `Generation` (scored as `generate_batch` does) as the
    last item. The pieces join to exactly the text of `generate_batch` for the same prompt."""
    from transformers import TextIteratorStreamer

    enc = encode_prompts(tm, [prompt], chat)
    streamer = TextIteratorStreamer(tm.processor, skip_prompt=True, skip_special_tokens=True)
    result: dict = {}

    @torch.inference_mode()
    def work() -> None:
        try:
            result["out"] = tm.model.generate(
                **enc, **_generate_kwargs(tm, max_new_tokens, temperature), streamer=streamer)
        except BaseException as err:  # re-raised in the caller's thread
            result["error"] = err
            streamer.end()

    worker = threading.Thread(target=work, daemon=True, name="tierserve-generate")
    worker.start()
    try:
        yield from (piece for piece in streamer if piece)
    finally:
        worker.join()
    if "error" in result:
        raise result["error"]
    yield _score(tm, enc, result["out"])[0]


def generate(tm: TaskModel, prompts: Sequence[str], *, max_new_tokens: int = 16,
             batch_size: int = 8, chat: bool = True) -> list[str]:
    """Greedy continuations of `prompts` (see `generate_scored`)."""
    return generate_scored(tm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           chat=chat)[0]


def calibration_lm(spec, full: TaskModel, pruned: TaskModel, inputs, *, limit: int = 64,
                   max_new_tokens: int = 16) -> dict:
    """The report's `calibration` block for a decoder LM: the cascade escalates a request when the
    pruned tier's mean token log-probability over its answer is below `threshold`, chosen on the
    validation prompts (else the calibration prompts) so that answers agree with full's
    (`answers_agree`) on at least `target_agreement` of them. `choices` (the task's distinct
    answers, when it has few) go to the router too, so its shadow compares answers the same way."""
    from .cascade import choose_threshold

    data, source = inputs.validation, "validation"
    if data is None or not data.prompts:
        data, source = inputs.calibration, "calibration (no validation prompts)"
    prompts = list(data.prompts[:limit]) or [t[:200] for t in data.texts[:limit]]
    choices = task_choices(data.answers)
    f_text = generate(full, prompts, max_new_tokens=max_new_tokens)
    p_text, conf = generate_scored(pruned, prompts, max_new_tokens=max_new_tokens)
    agree = np.array([answers_agree(a, b, choices) for a, b in zip(p_text, f_text, strict=True)])
    target = spec.serving.target_agreement
    cal = choose_threshold(np.asarray(conf), agree, target, spec.serving.calibration_delta,
                           field="spec.data.validation" if source == "validation"
                           else "spec.data.calibration")
    return {"policy": "cascade", "confidence": "mean_logprob", "threshold": cal.threshold,
            "target_agreement": target, "source": source, "request": "generate",
            "max_new_tokens": max_new_tokens, "choices": choices, "escalation": "whole",
            "guarantee": {"method": "empirical" if cal.delta is None else "ltt",
                          "delta": cal.delta, "risk_upper": cal.risk_upper,
                          "agreement_lower": cal.agreement_lower, "n_needed": cal.n_needed,
                          "n": cal.n},
            "validation": {"agreement": cal.agreement, "pruned_share": cal.pruned_share,
                           "n": cal.n, "pruned_agreement": float(np.mean(agree))}}


def normalize_answer(text: str) -> str:
    """First non-empty line, lower-cased, inner whitespace collapsed, outer punctuation dropped."""
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    return re.sub(r"\s+", " ", first).strip().strip(".,;:!?\"'`*").strip().lower()


def _mentions(text: str, answer: str) -> bool:
    """`answer` occurs in `text` as whole words, allowing a plural/singular -s ("game" ~ "games")."""
    stem = re.escape(answer[:-1] if answer.endswith("s") and len(answer) > 3 else answer)
    return bool(answer) and re.search(rf"\b{stem}s?\b", text) is not None


def answer_correct(generated: str, answer: str, choices: Sequence[str] = ()) -> bool:
    """The first line names the reference and no other of the task's answers: "about science"
    is right for "science"; a hedge such as "a game or science" is wrong for both."""
    g, a = normalize_answer(generated), normalize_answer(answer)
    return _mentions(g, a) and not any(_mentions(g, c) for c in choices if c != a)


MAX_CHOICES = 20  # a task with more distinct answers is free-form: answers compare as text


def task_choices(answers: Sequence[str]) -> list[str]:
    """The distinct normalised answers of a prompted task when it is a choice among a few
    (tagging, routing: "games" / "science"); [] for free-form answers."""
    distinct = sorted({normalize_answer(a) for a in answers} - {""})
    return distinct if len(distinct) <= MAX_CHOICES else []


def answer_choice(text: str, choices: Sequence[str]) -> str | None:
    """The one choice the first line names, or None (none, or a hedge naming several)."""
    line = normalize_answer(text)
    named = [c for c in choices if _mentions(line, c)]
    return named[0] if len(named) == 1 else None


def answers_agree(pruned: str, full: str, choices: Sequence[str] = ()) -> bool:
    """Do two generated answers say the same? With choices: they name the same one ("This
    package is about science." agrees with "Science"); otherwise, or when neither names one,
    their normalised first lines are equal."""
    a, b = answer_choice(pruned, choices), answer_choice(full, choices)
    if a is not None or b is not None:
        return a == b
    return normalize_answer(pruned) == normalize_answer(full)


def task_metrics(generated: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """exact_match, and accuracy with the task's distinct answers as the choices to tell apart
    (free-form tasks, where every answer differs, rarely mention another row's answer)."""
    choices = sorted({normalize_answer(a) for a in answers})
    pairs = list(zip(generated, answers, strict=True))
    return {"exact_match": float(np.mean([normalize_answer(g) == normalize_answer(a)
                                          for g, a in pairs])),
            "accuracy": float(np.mean([answer_correct(g, a, choices) for g, a in pairs]))}


# -- evaluation ---------------------------------------------------------------------------------
def evaluate_lm(tm: TaskModel, data: LMData, *, batch_size: int = 8, max_new_tokens: int = 16):
    """Perplexity (+ generation task) of `tm` on `data`: (metrics, slices, outputs, row slices),
    the fields of an `evaluate.Evaluation` of kind "lm" (evaluate.py wraps them; importing it
    here would be a cycle), whose outputs are the top-1 next-token ids at every real text
    position (for `next_token_agreement`)."""
    metrics: dict[str, float] = {}
    slices: dict[str, dict[str, float]] = {}
    top1 = np.zeros(0, dtype=np.int64)
    row_slices = None
    if data.texts:
        nll, count, top1, owner = perplexity_pass(tm, data.texts, batch_size)
        metrics["perplexity"] = _ppl(nll, count)
        if data.slices:
            keys = np.asarray(data.slices)
            slices = {str(s): {"perplexity": _ppl(nll[keys == s], count[keys == s])}
                      for s in np.unique(keys)}
            row_slices = tuple(data.slices[i] for i in owner)
    if data.prompts:
        generated = generate(tm, data.prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        metrics.update(task_metrics(generated, data.answers))
    return metrics, slices, top1, row_slices


def token_agreement(pruned_top1: np.ndarray, full_top1: np.ndarray) -> dict[str, float]:
    """Share of positions where the two models' top-1 next tokens agree."""
    value = float(np.mean(pruned_top1 == full_top1)) if len(full_top1) else float("nan")
    return {"next_token_agreement": value, "agreement": value}


# -- latency ------------------------------------------------------------------------------------
def _ids(tm: TaskModel, batch: int, seq_len: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(100, int(tm.model.config.vocab_size), (batch, seq_len), generator=g)


@torch.inference_mode()
def _prefill_s(tm: TaskModel, ids: torch.Tensor) -> float:
    t0 = time.perf_counter()
    tm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return time.perf_counter() - t0


@torch.inference_mode()
def _decode_s(tm: TaskModel, ids: torch.Tensor, steps: int) -> float:
    """Median seconds of one cached decode step after prefilling `ids`."""
    out = tm.model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)  # (B, 1)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = tm.model(input_ids=nxt, past_key_values=cache, use_cache=True)
        times.append(time.perf_counter() - t0)
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return statistics.median(times)


def latency_lm(full: TaskModel, pruned: TaskModel, *, batch: int = 4, seq_len: int = 128,
               decode_batch: int = 1, decode_steps: int = 16, rounds: int = 3) -> dict:
    """Prefill and decode latency of full and pruned (p50 over alternating rounds)."""
    ids, dec_ids = _ids(full, batch, seq_len), _ids(full, decode_batch, seq_len)
    for tm in (full, pruned):  # warm-up
        _prefill_s(tm, ids)
        _decode_s(tm, dec_ids, 2)
    pre: dict[str, list[float]] = {"full": [], "pruned": []}
    dec: dict[str, list[float]] = {"full": [], "pruned": []}
    for _ in range(rounds):
        for name, tm in (("full", full), ("pruned", pruned)):
            pre[name].append(_prefill_s(tm, ids))
            dec[name].append(_decode_s(tm, dec_ids, decode_steps))
    p = {k: statistics.median(v) for k, v in pre.items()}
    d = {k: statistics.median(v) for k, v in dec.items()}
    prefill = {"full_ms_per_token": 1e3 * p["full"] / (batch * seq_len),
               "pruned_ms_per_token": 1e3 * p["pruned"] / (batch * seq_len),
               "ratio": p["pruned"] / p["full"], "batch": batch, "seq_len": seq_len}
    decode = {"full_ms_per_token": 1e3 * d["full"], "pruned_ms_per_token": 1e3 * d["pruned"],
              "ratio": d["pruned"] / d["full"], "batch": decode_batch, "context": seq_len}
    return {"batch": batch, "seq_len": seq_len, "full_p50_s": p["full"], "pruned_p50_s": p["pruned"],
            "ratio": max(prefill["ratio"], decode["ratio"]), "prefill": prefill, "decode": decode}
