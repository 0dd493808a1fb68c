"""NumPy re-computations shared by the layer tests (tests/layers/test_<module>.py): random inputs, activations,
dense layers and masked softmax."""
import numpy as np

RNG = np.random.default_rng(0)
TOL = dict(rtol=1e-4, atol=1e-5)


def rand(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def relu(x):
    return np.maximum(x, 0.0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def dense(layer, x, act=None):
    y = x @ layer.kernel.numpy() + layer.bias.numpy()
    return act(y) if act else y


def masked_np_softmax(s, mask):
    w = softmax(np.where(mask, s, -1e9))
    return w * mask


def mask_of(b, l):
    lengths = RNG.integers(0, l + 1, b)
    lengths[0] = l                      # one full row
    lengths[1] = 0                      # one empty row
    return np.arange(l)[None, :] < lengths[:, None]
