"""The user behaviour sequence as the models see it, found from the schema's groups, never by names.

* **Behaviour / candidate pairs**: every ``behavior``-group sequence that looks up the same embedding
  table as a categorical feature of the ``item`` group (``hist_item_id`` shares ``item_id``,
  ``hist_cate_id`` shares ``cate_id``). A behaviour is the concatenation of its paired embeddings, and the
  candidate (target item) the concatenation of the paired item features, in the same order, so keys and
  query live in one space.
* **Behaviour scenarios**: the ``behavior``-group sequence that stores the scenario of each behaviour as
  scenario index + 1 (0 = padding), i.e. a sequence with its own table of exactly S + 1 rows (the schema
  convention of ``tfmsr/features/schema.py``). It is looked up in the scenario table (index - 1), so a
  behaviour's scenario and the request's scenario share one embedding.
* Every other sequence is "side" information, pooled by masked mean.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import tensorflow as tf

from tfmsr.features import Feature, Schema, SchemaError
from tfmsr.layers.embedding import FeatureEmbedding


def behavior_pairs(schema: Schema) -> List[Tuple[Feature, Feature]]:
    """``(sequence, item feature)`` pairs sharing an embedding table, in schema order."""
    items = schema.group("item", "categorical")
    pairs = []
    for seq in schema.group("behavior", "sequence"):
        match = [f for f in items if f.table == seq.table]
        if match:
            pairs.append((seq, match[0]))
    return pairs


def behavior_scenario(schema: Schema) -> Optional[Feature]:
    """The behaviour-scenario sequence (own table of S + 1 rows), or None."""
    for f in schema.group("behavior", "sequence"):
        if not f.share and f.vocab_size == schema.num_scenarios + 1 and not any(
                g.share == f.name for g in schema.features):
            return f
    return None


def require_behavior(schema: Schema, model: str) -> List[Tuple[Feature, Feature]]:
    """The behaviour pairs, or one SchemaError explaining what the model needs."""
    pairs = behavior_pairs(schema)
    if not pairs:
        raise SchemaError(
            f"{schema.source}: model '{model}' needs a user behaviour sequence: a feature with kind 'sequence', "
            "group 'behavior' and 'share' naming a categorical feature of group 'item' (e.g. "
            "{name: hist_item_id, kind: sequence, group: behavior, share: item_id, length: 30})")
    return pairs


class Behavior(NamedTuple):
    keys: tf.Tensor            # [B, L, D]  behaviour embeddings (paired fields concatenated)
    mask: tf.Tensor            # [B, L]     bool, real behaviours
    target: tf.Tensor          # [B, D]     candidate item, same fields in the same order
    features: Tuple[str, ...]  # the sequence features used


def embed_behavior(embedding: FeatureEmbedding, x: Dict[str, tf.Tensor], schema: Schema) -> Behavior:
    """Behaviour keys, mask and the matching candidate embedding (see the module docstring)."""
    pairs = behavior_pairs(schema)
    if not pairs:
        raise SchemaError(f"{schema.source}: no behaviour sequence shares a table with an item feature")
    keys = tf.concat([embedding.embed(x, s.name) for s, _ in pairs], axis=-1)
    target = tf.concat([embedding.embed(x, t.name) for _, t in pairs], axis=-1)
    return Behavior(keys, embedding.mask(x, pairs[0][0].name), target, tuple(s.name for s, _ in pairs))


def behavior_scenario_embedding(embedding: FeatureEmbedding, x: Dict[str, tf.Tensor],
                                schema: Schema) -> Optional[tf.Tensor]:
    """``[B, L, d_s]``: the scenario embedding of every behaviour (zeros at padding), or None."""
    f = behavior_scenario(schema)
    if f is None:
        return None
    ids = embedding.ids(x, f.name)
    emb = embedding.scenario_table(tf.maximum(ids - 1, 0))
    return emb * tf.cast(ids > 0, emb.dtype)[..., None]


def pooled_sequences(embedding: FeatureEmbedding, x: Dict[str, tf.Tensor], schema: Schema,
                     exclude: Sequence[str] = ()) -> List[tf.Tensor]:
    """Masked-mean ``[B, d]`` of every sequence feature not in ``exclude``."""
    return [embedding.pooled(x, f.name) for f in schema.of_kind("sequence") if f.name not in exclude]


def context_inputs(model, x: Dict[str, tf.Tensor], exclude_sequences: Sequence[str] = ()) -> tf.Tensor:
    """``[B, D]``: the classic embedding concatenation of ``model.flat_inputs`` without the sequences in
    ``exclude_sequences`` (the ones a model pools itself, e.g. by attention); the rest are mean-pooled."""
    parts = [model.flat_inputs(x, with_sequences=False)]
    parts += pooled_sequences(model.embedding, x, model.schema, exclude_sequences)
    return tf.concat(parts, axis=-1)
