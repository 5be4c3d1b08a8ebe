"""Online Instance Matching (OIM, Xiao et al. 2017), the re-ID loss of NAE and of the paper's Eq. (3).

A lookup table (LUT) holds one L2-normalised feature per labeled identity, a circular queue (CQ) holds
features of recent persons without identity. For a batch of normalised features x with ids y:

    logits = scalar * x @ [LUT; CQ]^T          loss = cross_entropy(logits[labeled], y[labeled])

(computed for labeled x only, and without concatenating the tables: see :func:`oim_loss`),

then, outside autograd and after the loss, ``LUT[y] <- normalise(m * LUT[y] + (1 - m) * x)`` for each
labeled x (in batch order) and every unlabeled x is pushed into the queue.

Both tables are persistent buffers (saved in safetensors with the model). Under torch.distributed the
update first gathers features and ids from every rank (in rank order), so every rank applies the same
update and holds the identical LUT and queue; the loss itself uses only local features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NO_IDENTITY = -1
"""The person id of a person without identity (a detection box, an unlabeled re-ID crop, PRW's -2): it
feeds the queue, never the LUT. The one definition for the model and the data (``data.schema`` imports
it); explicit, instead of the 5554/5555 magic numbers of older person search code."""


def oim_loss(
    features: torch.Tensor, person_ids: torch.Tensor, lut: torch.Tensor, queue: torch.Tensor, scalar: float
) -> torch.Tensor:
    """Mean cross-entropy of labeled features over ``scalar * x @ [lut; queue]^T`` (OIM's softmax).

    Computed as ``logsumexp`` over the LUT and over the queue combined with ``logaddexp``, so the
    (possibly million-row) table is never concatenated with the queue and the logits never copied.
    """
    lut_logits = scalar * features @ lut.t()
    log_normaliser = torch.logsumexp(lut_logits, dim=1)
    if queue.shape[0] > 0:
        log_normaliser = torch.logaddexp(log_normaliser, torch.logsumexp(scalar * features @ queue.t(), dim=1))
    target_logits = lut_logits.gather(1, person_ids[:, None]).squeeze(1)
    return (log_normaliser - target_logits).mean()


def _gather_from_all_ranks(features: torch.Tensor, person_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (features, ids) of all ranks in rank order; ranks may hold different numbers of rows."""
    import torch.distributed as dist

    world_size = dist.get_world_size()
    count = torch.tensor([features.shape[0]], device=features.device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    longest = max(counts)
    padded_features = features.new_zeros((longest, features.shape[1]))
    padded_features[: features.shape[0]] = features
    padded_ids = person_ids.new_zeros((longest,))
    padded_ids[: person_ids.shape[0]] = person_ids
    all_features = [torch.empty_like(padded_features) for _ in range(world_size)]
    all_ids = [torch.empty_like(padded_ids) for _ in range(world_size)]
    dist.all_gather(all_features, padded_features)
    dist.all_gather(all_ids, padded_ids)
    features = torch.cat([f[:n] for f, n in zip(all_features, counts)])
    person_ids = torch.cat([i[:n] for i, n in zip(all_ids, counts)])
    return features, person_ids


class OIMLoss(nn.Module):
    """OIM loss with its LUT and circular queue.

    Args:
        embedding_dim: feature size.
        num_person_ids: LUT rows (labeled identities ``0 .. num_person_ids - 1``).
        queue_size: CQ rows (0 disables the queue).
        scalar: inverse temperature (30, OIM/NAE).
        momentum: LUT momentum m (0.5, OIM/NAE).

    ``forward(features, person_ids)`` takes L2-normalised features (N, d) of persons (never background)
    and their ids; it returns the loss, and updates the tables afterwards when the module is training.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_person_ids: int,
        queue_size: int,
        scalar: float = 30.0,
        momentum: float = 0.5,
    ):
        super().__init__()
        self.num_person_ids = num_person_ids
        self.queue_size = queue_size
        self.scalar = scalar
        self.momentum = momentum
        self.register_buffer("lut", torch.zeros(num_person_ids, embedding_dim))
        self.register_buffer("queue", torch.zeros(queue_size, embedding_dim))
        self.register_buffer("queue_head", torch.zeros((), dtype=torch.long))

    def check_ids(self, person_ids: torch.Tensor, where: str = "labels") -> None:
        """Raise when an id is neither :data:`NO_IDENTITY` nor a LUT row."""
        bad = (person_ids != NO_IDENTITY) & ((person_ids < 0) | (person_ids >= self.num_person_ids))
        if bad.any():
            raise ValueError(
                f"{where}: person ids {person_ids[bad].tolist()} are outside the OIM table [0, {self.num_person_ids}) "
                f"and are not the no-identity value {NO_IDENTITY}; raise config.num_person_ids"
            )

    def forward(self, features: torch.Tensor, person_ids: torch.Tensor) -> torch.Tensor:
        self.check_ids(person_ids)
        labeled = person_ids != NO_IDENTITY
        if labeled.any():  # unlabeled persons only feed the queue: no logits are computed for them
            # The update below rewrites the tables in place while autograd still needs their values for
            # the backward pass: train on a snapshot (a copy costs ~5% of the matmuls at 1M identities).
            lut, queue = (self.lut.clone(), self.queue.clone()) if self.training else (self.lut, self.queue)
            loss = oim_loss(features[labeled], person_ids[labeled], lut, queue, self.scalar)
        else:
            loss = features.sum() * 0.0  # keeps the graph connected for DDP
        if self.training:
            self.update(features.detach(), person_ids)
        return loss

    @torch.no_grad()
    def update(self, features: torch.Tensor, person_ids: torch.Tensor) -> None:
        """Momentum-update the LUT rows of labeled features and enqueue unlabeled ones (all ranks' features)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            features, person_ids = _gather_from_all_ranks(features.contiguous(), person_ids.contiguous())
        # A non-finite feature (a diverging step the trainer will skip) must not poison the tables.
        finite = torch.isfinite(features).all(dim=1)
        features, person_ids = features[finite].to(self.lut.dtype), person_ids[finite]
        labeled = person_ids != NO_IDENTITY
        labeled_features, labeled_ids = features[labeled], person_ids[labeled]
        if labeled_ids.unique().numel() == labeled_ids.numel():
            rows = self.momentum * self.lut[labeled_ids] + (1.0 - self.momentum) * labeled_features
            self.lut[labeled_ids] = F.normalize(rows, dim=1)
        else:  # an id seen twice in the batch: apply the updates one after another, in batch order
            for feature, person_id in zip(labeled_features, labeled_ids.tolist()):
                row = self.momentum * self.lut[person_id] + (1.0 - self.momentum) * feature
                self.lut[person_id] = F.normalize(row, dim=0)
        self._enqueue(features[~labeled])

    def _enqueue(self, unlabeled: torch.Tensor) -> None:
        count = unlabeled.shape[0]
        if self.queue_size == 0 or count == 0:
            return
        if count > self.queue_size:  # only the newest queue_size survive a full turn of the circle
            self.queue_head.copy_((self.queue_head + count - self.queue_size) % self.queue_size)
            unlabeled, count = unlabeled[-self.queue_size :], self.queue_size
        positions = (self.queue_head + torch.arange(count, device=unlabeled.device)) % self.queue_size
        self.queue[positions] = unlabeled
        self.queue_head.copy_((self.queue_head + count) % self.queue_size)
