"""The vectorised Philox streams are the per-sample streams, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from datagen.ctp.rng import EPOCHS, HELD_OUT_EPOCH, SUBSET_EPOCH, SampleKey, Stream, generator, key_problem, uniforms


def test_batched_streams_equal_numpys_philox_bit_for_bit():
    keys = [(0, 0, 0), (2**64 - 1, 3, 5), (11, 2**24 - 1, 2**40 - 1), (7, 1, 2), (7, 1, 3)]
    attempts = np.array([0, 1, 3, 0, 63])
    counts = {Stream.CLIP: 22, Stream.TRAJECTORY: 7, Stream.COLOUR: 1, Stream.PATCH: 4}
    drawn = uniforms(keys, attempts, counts)
    for i, key in enumerate(keys):
        for stream, count in counts.items():
            expected = generator(SampleKey(*key), stream, int(attempts[i])).random(count)
            assert np.array_equal(drawn[stream][i], expected), (key, stream)
    # A key's draws do not depend on the other keys it is drawn with.
    alone = uniforms(keys[3:4], attempts[3:4], counts)
    assert all(np.array_equal(alone[s][0], drawn[s][3]) for s in counts)


@pytest.mark.parametrize("key", [(0, 0, 2**40), (0, 2**24, 0), (-1, 0, 0)])
def test_out_of_range_keys_are_refused(key):
    with pytest.raises(ValueError, match="out of range"):
        uniforms([key], [0], {Stream.CLIP: 1})
    with pytest.raises(ValueError, match="out of range"):
        uniforms(np.array([key]), [0], {Stream.CLIP: 1})


def test_the_key_range_check_names_the_key_without_building_a_generator():
    edges = [(0, 0, 0), (2**64 - 1, EPOCHS - 1, 2**40 - 1)]
    assert [key_problem(k) for k in edges] == [None, None]
    wrong = {
        (0, 0, 2**40): "the sample index must lie in [0, 1099511627776)",
        (0, EPOCHS, 0): "the epoch must lie in [0, 16777216)",
        (-1, 0, 0): "the seed must lie in [0, 18446744073709551616)",
        (2**64, 0, 0): "the seed must lie in [0, 18446744073709551616)",
    }
    for key, why in wrong.items():
        assert key_problem(key) == f"sample key out of range: {key}: {why}"
        with pytest.raises(ValueError, match=r"sample key out of range: \("):
            generator(SampleKey(*key), Stream.CLIP)


def test_reserved_epochs_lie_at_the_top_of_the_key_space_and_differ():
    assert EPOCHS == 2**24 and {HELD_OUT_EPOCH, SUBSET_EPOCH} == {EPOCHS - 1, EPOCHS - 2}
    assert key_problem((0, HELD_OUT_EPOCH, 0)) is None and key_problem((0, SUBSET_EPOCH, 0)) is None
