"""The masked mean of tfmsr/layers/embedding.py, each against a NumPy re-computation of its equation."""
import numpy as np
import tensorflow as tf

from layer_reference import RNG, TOL, rand

from tfmsr.layers import masked_mean


def test_masked_mean_over_real_positions_and_zero_for_empty_rows():
    seq, mask = rand(5, 7, 3), RNG.random((5, 7)) > 0.4
    mask[0] = False
    m = mask[..., None].astype(np.float32)
    want = (seq * m).sum(1) / np.maximum(m.sum(1), 1.0)
    got = masked_mean(tf.constant(seq), tf.constant(mask)).numpy()
    np.testing.assert_allclose(got, want, **TOL)
    assert not got[0].any()
