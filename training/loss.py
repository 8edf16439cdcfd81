"""Symmetric InfoNCE between the frozen image tower and each modality, over the samples carrying it.

Distributed state is an argument (open_clip's ``ClipLoss(rank=, world_size=)``): ``gather`` returns the
tensors of every rank in rank order. The rank's own slice is the live tensor, the others are detached
copies, and every rank computes the loss over the global batch. Each rank's gradient then reaches only
its own samples' encoder outputs; DDP averages the ranks' gradients, which is the global gradient divided
by the world size, so the caller backpropagates ``loss * world_size`` (``backward_scale``) to get exactly
the single-process gradient of the concatenated batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Gather = Callable[[torch.Tensor], list[torch.Tensor]]


def no_gather(t: torch.Tensor) -> list[torch.Tensor]:
    return [t]


def torch_distributed_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """all_gather without gradient; the caller puts its live tensor back in its slot."""
    import torch.distributed as dist

    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.detach().contiguous())
    return out


def info_nce(image: torch.Tensor, other: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetric InfoNCE of row-aligned unit vectors: row i of ``image`` pairs with row i of ``other``."""
    logits = scale * image @ other.t()
    target = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def masked_info_nce(image: torch.Tensor, other: torch.Tensor, valid: torch.Tensor, scale: float) -> torch.Tensor:
    """``info_nce(image[valid], other[valid])`` without data-dependent shapes, so without a host sync:
    invalid rows are ignored targets and invalid columns get a logit far below any real one. Fewer than
    two valid rows give 0 (no negatives to contrast)."""
    logits = scale * image @ other.t()
    keep = valid[None, :] & valid[:, None] | torch.eye(len(valid), dtype=torch.bool, device=valid.device)
    logits = logits.masked_fill(~keep, -1e4)  # finite: an all -inf row would turn gradients into NaN
    target = torch.where(valid, torch.arange(len(valid), device=valid.device), -100)
    n = valid.sum()
    per_dir = [F.cross_entropy(x, target, ignore_index=-100, reduction="sum") for x in (logits, logits.t())]
    loss = (per_dir[0] + per_dir[1]) / 2 / n.clamp(min=1)
    return torch.where(n >= 2, loss, loss * 0.0)


class BindingLoss:
    def __init__(self, scales: dict[str, float], rank: int = 0, world_size: int = 1, gather: Gather = no_gather):
        self.scales, self.rank, self.world_size, self.gather = scales, rank, world_size, gather

    @property
    def backward_scale(self) -> float:
        return float(self.world_size)

    def _global(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return t
        parts = list(self.gather(t))
        parts[self.rank] = t  # the live tensor keeps this rank's gradient path
        return torch.cat(parts)

    def __call__(
        self, image: torch.Tensor, embeddings: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``image`` BxD, ``embeddings[m]`` BxD, ``masks[m]`` B bool. Returns the summed loss and its parts
        (detached tensors: reading them syncs with the device, so the caller does that only when it logs)."""
        img = self._global(image)
        total = image.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        for m, emb in embeddings.items():
            mask = self._global(masks[m].to(torch.uint8)).bool()
            loss = masked_info_nce(img, self._global(emb), mask, self.scales[m])
            parts[m] = loss.detach()
            total = total + loss
        return total, parts
