"""``embedding_batch_l2`` through a model's compiled training step (DIN's mini-batch aware L2, eq. 4-5)."""
import numpy as np
import tf_keras as keras

from tfmsr.data.pipeline import make_dataset, split_files
from tfmsr.ranking.models import build


def test_training_loss_carries_the_mini_batch_aware_penalty_and_evaluation_does_not(synth_dir, synth_schema):
    """One compiled step at learning rate 0: the trained loss minus the evaluated loss (BCE alone) is
    ``l2 * (1024 / batch) * sum_j ||w_j||^2 / k_j`` over the rows the batch read, k_j = 1 batch x train rows /
    batch; a row read by several features sharing a table, or at several positions, counts once."""
    l2, rows = 0.1, 1000
    model = build("dnn", synth_schema, {"hidden": [8], "embedding_batch_l2": l2}, {"splits": {"train": {"rows": rows}}})
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    (x, y), = make_dataset(split_files(synth_dir, "valid"), synth_schema, 64, training=False).take(1)
    evaluated = model.test_on_batch(x, y, return_dict=True)["loss"]
    trained = model.train_on_batch(x, y, return_dict=True)["loss"]
    emb, want = model.embedding, 0.0
    for table, count in emb.counts.items():
        c, w = count.numpy(), emb.tables[table].embeddings.numpy().astype(np.float64)
        read = np.flatnonzero(c)
        want += l2 * (1024 / 64.0) * float(np.sum(np.sum(w[read] ** 2, axis=1) / (c[read] * rows / 64.0)))
        ids = np.concatenate([emb.ids(x, f.name).numpy().ravel() for f in synth_schema.features
                              if f.kind != "numeric" and f.table == table])
        assert c.max() == 1 and c.sum() == len(np.unique(ids[ids > 0]))
    assert want > 0 and float(emb.seen.numpy()) == 64
    np.testing.assert_allclose(trained - evaluated, want, rtol=1e-3)


def test_deepfm_tables_take_the_embedding_regularisers(synth_schema):
    """DeepFM's N(0, embedding_std) tables are the base's, so ``embedding_l2`` and ``embedding_batch_l2`` reach
    them (it built a second, unregularised FeatureEmbedding before)."""
    model = build("deepfm", synth_schema, {"embedding_l2": 1e-3, "embedding_batch_l2": 0.1, "embedding_std": 0.02})
    emb = model.embedding
    assert emb.batch_l2 == 0.1 and emb.counts
    table = next(iter(emb.tables.values()))
    assert table.embeddings_regularizer is not None
    assert table.embeddings_initializer.stddev == 0.02


def test_shipped_strength_only_where_measured():
    """The Params default is off; configs/dnn.yaml, musenet_movielens.yaml and saml.yaml ship 0.03 (measured on
    three real datasets, figures in their headers), no other config."""
    import glob
    import os

    import yaml

    from tfmsr.core.config import PACKAGED
    from tfmsr.ranking.models.base import RankingModel

    assert RankingModel.Params().embedding_batch_l2 == 0.0
    shipped = {}
    for path in glob.glob(os.path.join(PACKAGED, "*.yaml")):
        with open(path) as fh:
            model = (yaml.safe_load(fh) or {}).get("model") or {}
        shipped[os.path.basename(path)] = (model.get("params") or {}).get("embedding_batch_l2", 0.0)
    assert shipped.pop("dnn.yaml") == shipped.pop("musenet_movielens.yaml") == shipped.pop("saml.yaml") == 0.03
    assert not any(shipped.values())
