import json

import numpy as np
import pytest

from hf_personsearch.data.identity import IdentitySpace
from hf_personsearch.data.schema import NO_IDENTITY

N = NO_IDENTITY


def _space() -> IdentitySpace:
    return IdentitySpace.from_person_ids(
        [
            ("crowdhuman", "detection", [[N, N, N], [], [N, N]]),  # 5 boxes -> 5 new ids
            ("msmt17", "reid", [[7], [3], [7], [12]]),  # labeled ids {3, 7, 12}
            ("luperson", "reid", [[N], [N]]),  # 2 unlabeled crops
            ("prw", "search", [[5, N], [N, 5, 9]]),  # labeled {5, 9} + 2 unlabeled boxes
        ]
    )


def test_offsets_hand_computed():
    space = _space()
    assert [s.offset for s in space.sources] == [0, 5, 8, 10]
    assert [s.num_identities for s in space.sources] == [5, 3, 2, 4]
    assert space.num_identities == 14
    # Detection: ids in record order then box order.
    assert space.global_ids(0, 0, [N, N, N]).tolist() == [0, 1, 2]
    assert space.global_ids(0, 1, []).tolist() == []
    assert space.global_ids(0, 2, [N, N]).tolist() == [3, 4]
    # Labeled re-ID: offset 5 + rank among sorted {3, 7, 12}; the two crops of id 7 share one id.
    assert [space.global_ids(1, r, ids).tolist() for r, ids in enumerate([[7], [3], [7], [12]])] == [
        [6],
        [5],
        [6],
        [7],
    ]
    # Unlabeled re-ID: new ids after the (empty) labeled part.
    assert space.global_ids(2, 0, [N]).tolist() == [8]
    assert space.global_ids(2, 1, [N]).tolist() == [9]
    # Search: labeled {5, 9} -> 10, 11; unlabeled boxes -> 12, 13.
    assert space.global_ids(3, 0, [5, N]).tolist() == [10, 12]
    assert space.global_ids(3, 1, [N, 5, 9]).tolist() == [13, 10, 11]


def test_domain_ids_per_task():
    space = _space()
    assert [s.domain_id for s in space.sources] == [0, 0, 1, 1]  # detection IAM: crowdhuman, prw; reid IAM: msmt, lup
    assert space.num_domains("detection") == 2 and space.num_domains("reid") == 2


def test_detection_ids_ignored_every_box_new():
    space = IdentitySpace.from_person_ids([("ecp", "detection", [[4, 4]])])
    assert space.global_ids(0, 0, [4, 4]).tolist() == [0, 1]


def test_ids_unique_across_sources():
    space = _space()
    records = {
        0: [[N, N, N], [], [N, N]],
        1: [[7], [3], [7], [12]],
        2: [[N], [N]],
        3: [[5, N], [N, 5, 9]],
    }
    owner = {}
    for s, recs in records.items():
        for r, ids in enumerate(recs):
            for g in space.global_ids(s, r, ids).tolist():
                assert owner.setdefault(g, s) == s
    assert sorted(owner) == list(range(space.num_identities))


def test_json_round_trip():
    space = _space()
    text = json.dumps(space.to_dict())
    again = IdentitySpace.from_dict(json.loads(text))
    assert again.num_identities == space.num_identities
    for s, r, ids in [(0, 2, [N, N]), (1, 3, [12]), (3, 1, [N, 5, 9])]:
        np.testing.assert_array_equal(again.global_ids(s, r, ids), space.global_ids(s, r, ids))


def test_mismatched_records_are_rejected_with_names():
    space = _space()
    with pytest.raises(ValueError, match="msmt17.*record 0.*\\[99\\]"):
        space.global_ids(1, 0, [99])
    with pytest.raises(ValueError, match="crowdhuman.*record 1"):
        space.global_ids(0, 1, [N])
    with pytest.raises(IndexError, match="luperson"):
        space.global_ids(2, 5, [N])
    with pytest.raises(ValueError, match="negative"):
        IdentitySpace.from_person_ids([("x", "reid", [[-3]])])


def test_from_records_reads_person_ids():
    records = [{"person_ids": np.array([2], np.int64)}, {"person_ids": np.array([1], np.int64)}]
    space = IdentitySpace.from_records([("cuhk03", "reid", records)])
    assert space.global_ids(0, 0, [2]).tolist() == [1]


def test_agreement_facts_name_what_one_record_fewer_changes():
    from hf_personsearch.training.loop import describe_disagreement

    full = _space().agreement_facts()
    assert full["msmt17: first global id"] == 5 and full["identities in all"] == 14
    assert full == _space().agreement_facts()  # built twice from the same data: equal
    one_fewer = IdentitySpace.from_person_ids(
        [
            ("crowdhuman", "detection", [[N, N, N], []]),  # the last record (2 boxes) is missing
            ("msmt17", "reid", [[7], [3], [7], [12]]),
            ("luperson", "reid", [[N], [N]]),
            ("prw", "search", [[5, N], [N, 5, 9]]),
        ]
    ).agreement_facts()
    lines = describe_disagreement([full, one_fewer])
    assert lines[:3] == [
        "'identities in all': process 0 has 14, process 1 has 12",
        "'crowdhuman: records': process 0 has 3, process 1 has 2",
        "'crowdhuman: new identities': process 0 has 5, process 1 has 3",
    ]
    assert "'msmt17: first global id': process 0 has 5, process 1 has 3" in lines
    # the same counts with other labeled ids still differ (the sha256 covers the ids themselves)
    other_ids = IdentitySpace.from_person_ids(
        [
            ("crowdhuman", "detection", [[N, N, N], [], [N, N]]),
            ("msmt17", "reid", [[7], [4], [7], [12]]),
            ("luperson", "reid", [[N], [N]]),
            ("prw", "search", [[5, N], [N, 5, 9]]),
        ]
    ).agreement_facts()
    assert [line.split(":")[0] for line in describe_disagreement([full, other_ids])] == ["'identity space sha256'"]
