"""Hybrid sampler: draws pre-training images from several sources with mixing weights.

The paper "randomly samples images x^D and x^R from detection and re-ID datasets". This sampler
defines one global, seeded stream of draws ``t = 0, 1, 2, ...``:

- the source of draw ``t`` is chosen with probability proportional to its mixing weight
  (drawn in chunks of :data:`CHUNK` from a generator seeded by ``(seed, chunk)``);
- the k-th draw of source ``s`` takes position ``k mod n_s`` of a random permutation of that source,
  re-drawn each time the source is exhausted (seeded by ``(seed, s, k // n_s)``), so every image of a
  source is seen once before any is repeated.

Rank ``r`` of ``num_replicas`` processes takes the draws ``t = r, r + R, r + 2R, ...``: ranks see
distinct samples (until a source wraps around its permutation) and nothing is communicated.
The state is a single number, the count of samples this rank has yielded; :meth:`load_state_dict`
recomputes the per-source counters from it, so a resumed run continues exactly where the
uninterrupted one would be. With a DataLoader (which prefetches from the sampler) save
``{"position": batches_done * batch_size}`` rather than :meth:`state_dict` of the live sampler.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

CHUNK = 4096
"""Draws per seeded chunk of source choices: large enough to vectorise, small enough to seek fast."""


class HybridSampler(Sampler):
    """Yields ``(source_index, sample_index)`` pairs from several sources; see the module docstring.

    Args:
        source_sizes: number of samples of each source.
        weights: mixing weight of each source (normalised here). Default ``None``: proportional to the
            source sizes, i.e. uniform over all images, as concatenating the datasets would be.
        num_samples: samples this rank yields per pass (``len(sampler)``); ``None`` (default) for an
            endless stream, the natural form for step-based pre-training.
        seed: seed of the whole stream (same on every rank).
        num_replicas / rank: process sharding (default: a single process).
    """

    def __init__(
        self,
        source_sizes: Sequence[int],
        weights: Sequence[float] | None = None,
        *,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        self.source_sizes = [int(n) for n in source_sizes]
        if not self.source_sizes or min(self.source_sizes) <= 0:
            raise ValueError(f"every source needs at least one sample, got sizes {self.source_sizes}")
        raw = np.asarray(self.source_sizes if weights is None else weights, dtype=np.float64)
        if raw.shape != (len(self.source_sizes),) or (raw < 0).any() or raw.sum() <= 0:
            raise ValueError(
                f"weights must be {len(self.source_sizes)} non-negative numbers with a positive sum, got {weights}"
            )
        self.weights = raw / raw.sum()
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in 0..{num_replicas - 1}, got {rank}")
        if num_samples is not None and num_samples <= 0:
            raise ValueError(f"num_samples must be positive or None, got {num_samples}")
        self.num_samples = num_samples
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("an endless HybridSampler has no length; pass num_samples for a fixed-length pass")
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Fixed-length mode: pass ``epoch`` continues the stream after ``epoch`` full passes.

        A completed pass advances the epoch by itself; this is for DistributedSampler-style loops.
        """
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        return {"position": self.position, "epoch": self.epoch, "seed": self.seed, "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state["position"]`` (samples already yielded by this rank in this pass)."""
        for key in ("seed", "num_replicas"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]} but this sampler has {getattr(self, key)}")
        self.position = int(state["position"])
        self.epoch = int(state.get("epoch", self.epoch))

    def _choices(self, chunk: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0, chunk])
        return rng.choice(len(self.weights), size=CHUNK, p=self.weights)

    def _permutation(self, source: int, cycle: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1, source, cycle]).permutation(self.source_sizes[source])

    def _draws_before(self, draw: int) -> np.ndarray:
        """How many times each source was drawn in the global draws ``0 .. draw - 1``."""
        counts = np.zeros(len(self.weights), dtype=np.int64)
        full, rest = divmod(draw, CHUNK)
        for chunk in range(full):
            counts += np.bincount(self._choices(chunk), minlength=len(counts))
        if rest:
            counts += np.bincount(self._choices(full)[:rest], minlength=len(counts))
        return counts

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pass_start = 0 if self.num_samples is None else self.epoch * self.num_samples
        # Draws come in blocks of num_replicas, one per rank; block b holds draws b*R .. b*R + R - 1.
        block = pass_start + self.position
        counts = self._draws_before(block * self.num_replicas)
        chunk_index, choices = -1, np.empty(0, dtype=np.int64)
        permutations: dict[int, tuple[int, np.ndarray]] = {}
        while self.num_samples is None or self.position < self.num_samples:
            mine = (0, 0, 0)
            for step in range(self.num_replicas):
                # Every rank walks every draw to keep the per-source counts, and yields only its own.
                draw = block * self.num_replicas + step
                if draw // CHUNK != chunk_index:
                    chunk_index = draw // CHUNK
                    choices = self._choices(chunk_index)
                source = int(choices[draw % CHUNK])
                cycle, offset = divmod(int(counts[source]), self.source_sizes[source])
                counts[source] += 1
                if step == self.rank:
                    mine = (source, cycle, offset)
            source, cycle, offset = mine
            if source not in permutations or permutations[source][0] != cycle:
                permutations[source] = (cycle, self._permutation(source, cycle))
            block += 1
            self.position += 1
            yield source, int(permutations[source][1][offset])
        self.position = 0
        self.epoch += 1
