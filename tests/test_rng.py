"""The vectorised Philox streams are the per-sample streams, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from datagen.rng import SampleKey, Stream, generator, uniforms


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
