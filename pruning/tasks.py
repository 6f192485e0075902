"""Task wrappers: one callable per served task, turning raw inputs into the tensor a gate compares.

- embedding: mean-pooled, L2-normalised sentence embeddings (B, d) from a bare encoder
- rerank: a bi-encoder (cosine of query and document embeddings) or a cross-encoder (one logit per
  (query, document) pair), chosen by the checkpoint's architecture
- sequence-classification: logits (B, C)
- image-classification: logits (B, C) from pixel values
- text-generation: a causal LM's next-token logits at every real (non-padding) position,
  flattened to (N tokens, V), so criteria, distillation and agreement treat each position as
  one V-way classification (lm.py holds perplexity, agreement and generation)

Criteria, recovery and evaluation all call `TaskModel.outputs(batch)`, so "the full model's own
outputs" mean the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["Task", "TaskModel", "lm_tokenizer", "load_task_model", "mean_pool"]


class Task(StrEnum):
    embedding = "embedding"
    rerank = "rerank"
    sequence_classification = "sequence-classification"
    image_classification = "image-classification"
    text_generation = "text-generation"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d), (B, T) -> (B, d): mean over real tokens, as sentence-transformers does."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@dataclass
class TaskModel:
    """A Hugging Face model plus its preprocessor, behind one task-shaped forward."""

    task: Task
    model: nn.Module
    processor: Any  # tokenizer, or image processor for image tasks
    cross_encoder: bool = False  # rerank only: True if the model scores (query, doc) pairs jointly
    max_length: int = 128

    # -- preprocessing ------------------------------------------------------------------------
    def batch(self, examples: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Tokenise (or process) one batch. Text tasks take str, or (str, str) pairs for cross-encoders."""
        if self.task is Task.image_classification:
            return dict(self.processor(images=list(examples), return_tensors="pt"))
        if examples and isinstance(examples[0], tuple | list):
            first, second = zip(*examples, strict=True)
            enc = self.processor(list(first), list(second), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
        else:
            enc = self.processor(list(examples), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
        return dict(enc)

    def batches(self, examples: Sequence[Any], batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
        return [self.batch(examples[i:i + batch_size]) for i in range(0, len(examples), batch_size)]

    # -- forward --------------------------------------------------------------------------------
    def outputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embeddings (B, d) for embedding and bi-encoder rerank; logits (B, C) otherwise."""
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        if self.task in (Task.embedding, Task.rerank) and not self.cross_encoder:
            hidden = self.model(**batch).last_hidden_state  # (B, T, d)
            return nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)
        if self.task is Task.text_generation:
            logits = self.model(**batch, use_cache=False).logits  # (B, T, V)
            mask = batch.get("attention_mask")
            return logits[mask.bool()] if mask is not None else logits.flatten(0, 1)  # (N, V)
        return self.model(**batch).logits  # (B, C)

    @property
    def is_classifier(self) -> bool:
        return self.task in (Task.sequence_classification, Task.image_classification,
                             Task.text_generation) or self.cross_encoder

    def save_preprocessor(self, path: str | Path) -> None:
        self.processor.save_pretrained(str(path))


def lm_tokenizer(tokenizer: Any) -> Any:
    """A causal LM's tokenizer for scoring: right padding, EOS as the pad token if none."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_task_model(path: str | Path, task: Task | str, *, trust_remote_code: bool = False,
                    max_length: int = 128, dtype: torch.dtype = torch.float32) -> TaskModel:
    """Load a local HF model directory for `task`. Never reaches the hub; remote code stays off."""
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    task = Task(task)
    path = str(path)
    kw = {"trust_remote_code": trust_remote_code, "local_files_only": True}
    config = AutoConfig.from_pretrained(path, **kw)
    archs = config.architectures or []
    cross = task is Task.rerank and any(a.endswith("ForSequenceClassification") for a in archs)
    if task is Task.image_classification:
        model = AutoModelForImageClassification.from_pretrained(path, dtype=dtype, **kw)
        processor = AutoImageProcessor.from_pretrained(path, **kw)
    elif task is Task.text_generation:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
        processor = lm_tokenizer(AutoTokenizer.from_pretrained(path, **kw))
    else:
        cls = AutoModelForSequenceClassification if (cross or task is Task.sequence_classification) else AutoModel
        model = cls.from_pretrained(path, dtype=dtype, **kw)
        processor = AutoTokenizer.from_pretrained(path, **kw)
    model.eval()
    return TaskModel(task=task, model=model, processor=processor, cross_encoder=cross, max_length=max_length)
