import itertools

import numpy as np
import pytest

from hf_personsearch.data.sampler import CHUNK, HybridSampler


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_deterministic_under_seed_and_seed_matters():
    a = _take(HybridSampler([7, 3, 20], [1, 1, 2], seed=5), 200)
    b = _take(HybridSampler([7, 3, 20], [1, 1, 2], seed=5), 200)
    c = _take(HybridSampler([7, 3, 20], [1, 1, 2], seed=6), 200)
    assert a == b
    assert a != c


def test_indices_valid_and_each_source_covered_before_repeat():
    sizes = [7, 3, 20]
    draws = _take(HybridSampler(sizes, seed=0), 3000)
    for source, size in enumerate(sizes):
        seen = [i for s, i in draws if s == source]
        assert all(0 <= i < size for i in seen)
        # Permutation cycles: every consecutive block of `size` draws of a source is a permutation.
        for start in range(0, len(seen) - size + 1, size):
            assert sorted(seen[start : start + size]) == list(range(size))


def test_mixing_weights_respected():
    draws = _take(HybridSampler([10, 10, 10], [0.5, 0.3, 0.2], seed=1), 20000)
    freq = np.bincount([s for s, _ in draws], minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.02)
    # Default weights follow the source sizes (uniform over all images).
    draws = _take(HybridSampler([100, 300]), 8000)
    assert abs(np.mean([s for s, _ in draws]) - 0.75) < 0.03


def test_zero_weight_source_never_drawn():
    assert all(s != 1 for s, _ in _take(HybridSampler([5, 5], [1, 0]), 500))


@pytest.mark.parametrize("stop", [0, 1, 17, CHUNK - 1, CHUNK + 3])
def test_resume_equals_uninterrupted(stop):
    full = _take(HybridSampler([7, 3, 20], [1, 1, 2], seed=3), stop + 50)
    first = HybridSampler([7, 3, 20], [1, 1, 2], seed=3)
    head = _take(first, stop)
    state = first.state_dict()
    assert state["position"] == stop
    resumed = HybridSampler([7, 3, 20], [1, 1, 2], seed=3)
    resumed.load_state_dict(state)
    assert head + _take(resumed, 50) == full


def test_resume_sharded():
    full = _take(HybridSampler([11, 4], seed=2, num_replicas=3, rank=1), 40)
    resumed = HybridSampler([11, 4], seed=2, num_replicas=3, rank=1)
    resumed.load_state_dict({"position": 25, "seed": 2, "num_replicas": 3})
    assert _take(resumed, 15) == full[25:]


def test_resume_rejects_other_seed():
    with pytest.raises(ValueError, match="seed=1.*has 2"):
        HybridSampler([3], seed=2).load_state_dict({"position": 0, "seed": 1})


def test_shards_are_disjoint_and_cover_the_single_process_stream():
    sizes, weights = [30, 50], [1, 1]
    single = _take(HybridSampler(sizes, weights, seed=4), 60)
    ranks = [_take(HybridSampler(sizes, weights, seed=4, num_replicas=2, rank=r), 30) for r in range(2)]
    assert [ranks[t % 2][t // 2] for t in range(60)] == single
    # 60 draws over 80 images never wrap a source: ranks see distinct samples.
    assert not set(ranks[0]) & set(ranks[1])


def test_fixed_length_passes_continue_the_stream():
    sampler = HybridSampler([9, 9], seed=0, num_samples=10)
    assert len(sampler) == 10
    first, second = list(sampler), list(sampler)
    assert len(first) == len(second) == 10
    assert first + second == _take(HybridSampler([9, 9], seed=0), 20)
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_endless_has_no_len_and_bad_arguments_are_named():
    with pytest.raises(TypeError, match="endless"):
        len(HybridSampler([3]))
    with pytest.raises(ValueError, match="weights"):
        HybridSampler([3, 4], [1])
    with pytest.raises(ValueError, match="rank"):
        HybridSampler([3], num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="at least one sample"):
        HybridSampler([3, 0])
