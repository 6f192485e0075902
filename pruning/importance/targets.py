"""What a data-driven criterion differentiates: the loss, with labels or label-free ("self").

Criteria evaluate at the full model (all masks 1), so the full model's own output for a batch is
simply `out.detach()`: one forward per batch. The losses are per example, (B,), and example b's
loss depends on example b's masked forward only; that is what lets Fisher take per-example
gradients from one backward (see fisher.py).

Label-free targets. A loss that compares the model with its own output (KL, MSE, soft-target
cross-entropy) has its minimum at mask = 1, so its gradient there is exactly zero and every
gradient criterion would score zero. Instead:

- classifiers, C > 1 classes: cross-entropy against labels *sampled* from the full model's softmax
  (`pseudo="sample"`, the true Fisher of Kwon et al. 2022; seeded per batch, so deterministic),
  or against its argmax (`pseudo="argmax"`).
- one-logit classifiers (cross-encoder rerankers): binary cross-entropy against a Bernoulli
  sample of sigmoid(logit) (or logit > 0 for `pseudo="argmax"`).
- embeddings (bi-encoders): in-batch InfoNCE between the masked model's embeddings and the full
  model's embeddings of the same batch: logits = e_masked @ e_full.T / tau, target = identity.
  Its gradient at mask = 1 is not zero, because the softmax over the batch is not one-hot.
  tau defaults to 0.5: embeddings are unit norm, so logits lie in [-2, 2] and the softmax stays
  far from one-hot (at tau = 0.05 it saturates, scores shrink to ~1e-10 and, on held-out Lee
  news, pruning by them kept slightly less agreement with the full model). Logits are float64.

With labels: cross-entropy (BCE for one logit) for classifiers; for embeddings the same InfoNCE
with every in-batch example of the same label counted as a positive
(loss_b = -log sum_{j: y_j = y_b} p_bj), i.e. labels are group ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tierserve.pruning.tasks import TaskModel

__all__ = ["Targets", "batch_size", "per_example_loss", "token_mask"]


@dataclass(frozen=True)
class Targets:
    """The loss a criterion takes gradients of. Build with `Targets.self_()` / `Targets.from_labels`."""

    kind: str = "self"  # "self" (label-free) | "labels"
    labels: tuple[torch.Tensor, ...] | None = None  # per batch: (B,) class ids / group ids / 0-1
    pseudo: str = "sample"  # self-targets for classifiers: "sample" (true Fisher) | "argmax"
    tau: float = 0.5  # InfoNCE temperature for embeddings
    seed: int = 0  # pseudo-label sampling seed (batch k uses seed + k)

    def __post_init__(self) -> None:
        if self.kind not in ("self", "labels"):
            raise ValueError(f"target: expected 'self' or 'labels', got {self.kind!r}")
        if self.kind == "labels" and self.labels is None:
            raise ValueError("target='labels' needs labels")
        if self.pseudo not in ("sample", "argmax"):
            raise ValueError(f"pseudo: expected 'sample' or 'argmax', got {self.pseudo!r}")

    @classmethod
    def self_(cls, pseudo: str = "sample", tau: float = 0.5, seed: int = 0) -> Targets:
        return cls(kind="self", pseudo=pseudo, tau=tau, seed=seed)

    @classmethod
    def from_labels(cls, labels: Sequence[int | float] | torch.Tensor,
                    batches: Sequence[dict[str, torch.Tensor]], tau: float = 0.5) -> Targets:
        """Split one flat label sequence (all examples, batch order) into per-batch tensors."""
        flat = torch.as_tensor(labels)
        sizes = [batch_size(b) for b in batches]
        if flat.dim() != 1 or flat.numel() != sum(sizes):
            raise ValueError(f"labels: got shape {tuple(flat.shape)}, batches hold {sum(sizes)} examples")
        return cls(kind="labels", labels=tuple(flat.split(sizes)), tau=tau)


def batch_size(batch: dict[str, torch.Tensor]) -> int:
    return int(next(iter(batch.values())).shape[0])


def token_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """(B, T) 1 for real tokens, or None when every position is real (images)."""
    return batch.get("attention_mask")


def _pseudo_labels(ref: torch.Tensor, targets: Targets, index: int) -> torch.Tensor:
    """Class ids (B,) or 0/1 floats (B,) drawn from the full model's own prediction."""
    gen = torch.Generator().manual_seed(targets.seed + index)
    if ref.shape[-1] == 1:
        p = torch.sigmoid(ref[:, 0].float().cpu())  # (B,)
        y = (p > 0.5).float() if targets.pseudo == "argmax" else torch.bernoulli(p, generator=gen)
        return y.to(ref.device)
    if targets.pseudo == "argmax":
        return ref.argmax(-1)
    probs = torch.softmax(ref.float().cpu(), dim=-1)  # (B, C)
    return torch.multinomial(probs, 1, generator=gen)[:, 0].to(ref.device)


def _classifier_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if out.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(out[:, 0], y.to(out.dtype), reduction="none")
    return F.cross_entropy(out, y.long(), reduction="none")  # (B,)


def _infonce(emb: torch.Tensor, ref: torch.Tensor, groups: torch.Tensor | None,
             tau: float) -> torch.Tensor:
    """(B, d) masked, (B, d) full -> (B,) InfoNCE; positives = same group (identity if None)."""
    if emb.shape[0] < 2:
        raise ValueError("embedding criteria need batches of at least 2 examples (in-batch InfoNCE)")
    # float64: the softmax is near one-hot, and 1 - p_bb must not round away in float32
    logp = torch.log_softmax(emb.double() @ ref.double().T / tau, dim=-1)  # (B, B)
    if groups is None:
        return -logp.diagonal()
    same = groups.view(-1, 1).to(emb.device) == groups.view(1, -1).to(emb.device)  # (B, B)
    return -torch.logsumexp(logp.masked_fill(~same, float("-inf")), dim=-1)


def per_example_loss(task_model: TaskModel, targets: Targets, index: int,
                     out: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
    """Loss (B,) of batch number `index` given the model's output `out` (B, d) or (B, C).

    `ref` is the full model's output for the same batch; default `out.detach()` (valid when `out`
    comes from the full model, masks at 1, which is how criteria call it).
    """
    ref = out.detach() if ref is None else ref
    labels = targets.labels[index] if targets.kind == "labels" else None
    if task_model.is_classifier:
        y = labels if labels is not None else _pseudo_labels(ref, targets, index)
        return _classifier_loss(out, y.to(out.device))
    return _infonce(out, ref, labels, targets.tau)
