"""Two-tower retrieval models: shared base class and a registry of their own.

Retrieval models live apart from the ranking registry (``tfmsr.ranking.models``) so ranking export, benchmark
and ``tfmsr models`` never pick them up. A retrieval model maps

* a **request** (user-side features + scenario + ``user_stats``, see ``tfmsr.retrieval.data``) to
  ``user_vectors(request) [B, d]``: the user's vector in the request's own scenario, and
* **items** (item features + ``item_stats``) to ``item_vectors(items, s) [N, d]``: their vectors in
  scenario ``s`` (the corpus of scenario s is indexed with these),

and the score is the dot product of the two (of the L2-normalised vectors, i.e. the cosine, when
``cosine = True``). A model's ``compute_losses`` is its loss (the training contract of
:class:`tfmsr.core.model.TrainableModel`; a batch is a dict, without labels). A model trained on one scenario
only (single-scenario training, SASS Table 2) has ``scenario`` set: it serves that scenario.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Literal, Optional

import tensorflow as tf

from tfmsr.core.errors import ConfigError
from tfmsr.core import params as params_
from tfmsr.core.model import TrainableModel
from tfmsr.core.registry import Parametrized, Registry
from tfmsr.features import Schema
from tfmsr.layers import FeatureEmbedding, masked_mean, own_rows
from tfmsr.layers.behavior import behavior_pairs, behavior_scenario
from tfmsr.layers.sass import cosine, in_batch_cosines, in_batch_mask


def _import_all():
    from tfmsr.retrieval.models import dssm, sass, youtubednn  # noqa: F401  (registers every retrieval model)


_REGISTRY = Registry("retrieval model", _import_all)
register, available, get_class = _REGISTRY.register, _REGISTRY.available, _REGISTRY.get


def build(name: str, schema: Schema, params: Optional[dict] = None, scenario: Optional[int] = None):
    return get_class(name)(schema, params or {}, scenario=scenario)


gather_scenario = own_rows  # ``x[b, scenario[b]]`` of ``[B, S, d]`` (the layers' own-scenario gather)
# a model's negatives: sampled per example, sampled once per batch and scenario (shared), the batch's other positives
NegativesFrom = Literal["sampled", "shared", "batch"]
NegativeSampler = Literal["unigram", "uniform"]   # the distribution sampled negatives are drawn from


class RetrievalModel(Parametrized, TrainableModel):
    """Base: schema, validated params, the shared embedding layer and input assembly."""

    kind = "retrieval model"

    @dataclass
    class Params(params_.Params):
        embedding_dim: int = 16
    supports_pretrain = False
    cosine = True
    negatives_param = "negatives"   # the param holding the number of sampled negatives per positive (or None)

    def __init__(self, schema: Schema, params: Optional[dict] = None, scenario: Optional[int] = None, **kwargs):
        super().__init__(name=self.model_name, **kwargs)
        self.schema = schema
        self.params = self.typed_params(params or {})
        self.num_scenarios = schema.num_scenarios
        self.scenario = scenario
        self.scenario_key = schema.scenario.name
        self.embedding = FeatureEmbedding(schema, dim=self.params.embedding_dim, name="embedding")
        self.behaviour = behavior_pairs(schema)
        self.behaviour_scenario = behavior_scenario(schema)

    def start_finetune(self):
        """Called by the trainer right before fine-tuning starts (a hook; nothing to do by default)."""

    def step_outputs(self, features, training=False):
        """Nothing beside the losses: the towers run in ``compute_losses``."""
        return {}

    @property
    def in_batch(self) -> bool:
        """``negatives_from: batch``: the other positives of the batch are the negatives, none are sampled."""
        return getattr(self.params, "negatives_from", "sampled") == "batch"

    @property
    def shared_negatives(self) -> bool:
        """``negatives_from: shared``: one pool of sampled negatives per scenario and batch, ranked by every
        user of the batch in that scenario (``RetrievalData.finetune_dataset(shared=True)``)."""
        return getattr(self.params, "negatives_from", "sampled") == "shared"

    def negative_scenarios(self, scenario: tf.Tensor, m: int) -> tf.Tensor:
        """The scenario each sampled negative is scored in: its example's (``scenario [B]`` repeated ``m``
        times), or with shared negatives its pool's (pool r = scenario r; the model's own for one scenario)."""
        if not self.shared_negatives:
            return tf.repeat(scenario, m)
        if self.scenario is not None:
            return tf.fill([m], tf.constant(self.scenario, tf.int64))
        return tf.repeat(tf.range(self.num_scenarios, dtype=tf.int64), m)

    @property
    def negatives(self) -> int:
        """Sampled negatives per positive the training batches must carry."""
        return int(getattr(self.params, self.negatives_param)) if self.negatives_param and not self.in_batch else 0

    @property
    def needs_probability(self) -> bool:
        """Whether training batches carry ``pos_prob`` (the logQ correction of in-batch negatives)."""
        return self.in_batch

    def ranked_cosines(self, u, p, data, n=None, scenario=None):
        """What a matching loss ranks: ``(pos [B], neg [B, m], mask, log_q)``, the cosines of each user ``u``
        with its positive and with its negatives. Sampled negatives: ``n [B, m, d]``, no mask or logQ.
        In-batch (``negatives_from: batch``): every other positive of the batch (``in_batch_cosines``;
        ``p [B, S, d]`` is read in each user's ``scenario``), the same item masked out, and ``log_q`` = the log
        of each positive's share of the training positives (for ``cosine_softmax_loss``). Shared negatives:
        ``n [R, m, d]``, the pools; each user ranks its scenario's pool."""
        if self.in_batch:
            cos = in_batch_cosines(u, p, scenario)
            return tf.linalg.diag_part(cos), cos, in_batch_mask(data["pos_id"]), tf.math.log(data["pos_prob"])
        if len(p.shape) == 3:
            p = gather_scenario(p, scenario)
        if self.shared_negatives:   # every user against every pool [B, R, m] (a matmul), then its own pool
            every = tf.einsum("bd,rmd->brm", tf.math.l2_normalize(u, -1), tf.math.l2_normalize(n, -1))
            own = every[:, 0] if self.scenario is not None else gather_scenario(every, self.request_scenario(
                data["request"]))
            return cosine(u, p), own, None, None
        return cosine(u, p), cosine(u[:, None, :], n), None, None

    # ------------------------------------------------------------------ input assembly
    def profile(self, x: Dict[str, tf.Tensor], groups) -> tf.Tensor:
        """``[B, D]``: categorical embeddings and standardised numeric features of ``groups``."""
        parts: List[tf.Tensor] = []
        for g in groups:
            parts.extend(self.embedding.group(x, g))
            num = self.embedding.numeric(x, g)
            if num is not None:
                parts.append(num)
        if not parts:
            raise ConfigError(f"{self.schema.source}: no features in groups {list(groups)}")
        return tf.concat(parts, axis=-1)

    def user_profile(self, x) -> tf.Tensor:
        groups = [g for g in ("user", "context", "query") if self.schema.group(g)]
        return self.profile(x, groups)

    def item_profile(self, x) -> tf.Tensor:
        return self.profile(x, ["item"])

    def behaviour_keys(self, x):
        """``([B, L, D], mask [B, L])``: each behaviour's paired item fields concatenated, or None."""
        if not self.behaviour:
            return None
        keys = tf.concat([self.embedding.embed(x, s.name) for s, _ in self.behaviour], axis=-1)
        return keys, self.embedding.mask(x, self.behaviour[0][0].name)

    def behaviour_scenario_mask(self, x, mask):
        """``[B, S, L]`` bool: behaviours that happened in each scenario (all of them when the schema has no
        behaviour-scenario sequence)."""
        S = self.num_scenarios
        if self.behaviour_scenario is None:
            return tf.tile(mask[:, None, :], [1, S, 1])
        scen = self.embedding.ids(x, self.behaviour_scenario.name)                 # s + 1, 0 = padding
        own = tf.equal(scen[:, None, :], tf.range(1, S + 1, dtype=scen.dtype)[None, :, None])
        return own & mask[:, None, :]

    def mean_behaviour(self, x) -> Optional[tf.Tensor]:
        b = self.behaviour_keys(x)
        return None if b is None else masked_mean(*b)

    def request_scenario(self, x) -> tf.Tensor:
        return tf.cast(x[self.scenario_key], tf.int64)

    def user_stats_at(self, x, scenario) -> tf.Tensor:
        """``[B, 3]``: the user's statistics in ``scenario`` (``[B]``), or over all scenarios (None)."""
        st = x["user_stats"]
        if scenario is None:
            return st[:, self.num_scenarios]
        return gather_scenario(st, scenario)

    def item_stats_at(self, items, s: Optional[int]) -> tf.Tensor:
        return items["item_stats"][:, self.num_scenarios if s is None else s]

    def flat_request(self, x) -> tf.Tensor:
        """``[B, D]`` classic two-tower user input: profile, mean-pooled behaviour, the user's statistics
        in the request's scenario and (mix-scenario training) the scenario embedding."""
        parts = [self.user_profile(x)]
        pooled = self.mean_behaviour(x)
        if pooled is not None:
            parts.append(pooled)
        parts.append(self.user_stats_at(x, self.request_scenario(x)))
        if self.scenario is None:
            parts.append(self.embedding.scenario(x))
        return tf.concat(parts, axis=-1)

    # ------------------------------------------------------------------ the retrieval interface
    def user_vectors(self, request, training=False) -> tf.Tensor:
        raise TypeError(f"{type(self).__name__} must define user_vectors()")

    def item_vectors(self, items, scenario: int, training=False) -> tf.Tensor:
        raise TypeError(f"{type(self).__name__} must define item_vectors()")

    def call(self, inputs, training=False):
        """``{"request", "items"}`` -> ``[B, N]`` scores of every request against every item (in the
        model's serving scenario, or scenario 0 for a mix model; builds every variable)."""
        u = self.user_vectors(inputs["request"], training=training)
        v = self.item_vectors(inputs["items"], self.scenario or 0, training=training)
        if self.cosine:
            u, v = tf.math.l2_normalize(u, -1), tf.math.l2_normalize(v, -1)
        return tf.matmul(u, v, transpose_b=True)

    def get_config(self):
        return {"model": self.model_name, "params": self.params.to_dict(), "scenario": self.scenario}

    @property
    def sampler_power(self) -> float:
        """Exponent of the negative sampler: each candidate of the example's scenario corpus is drawn with
        probability proportional to (train exposures)^power (``RetrievalData.negative_logits``)."""
        p = self.params
        return 0.0 if getattr(p, "negative_sampler", "uniform") == "uniform" else float(p.sampler_power)


@dataclass
class SampledNegativesParams(RetrievalModel.Params):
    """The negatives of a matching loss (shared by the models that sample them, DSSM and SASS): each of an
    example's ``negatives`` is drawn from its scenario's corpus (the candidates evaluation ranks; SASS eq. 11:
    "randomly sampled from whole candidate set"), ``uniform``: every item equally likely, or ``unigram``: with
    probability ~ train exposures^``sampler_power`` (word2vec's noise distribution U^0.75, Mikolov et al.,
    NeurIPS 2013; the paper SASS cites for it, [23] = arXiv:1301.3781, trains with hierarchical softmax and
    fixes none). ``negatives_from: batch``: no sampling, the batch's other positives instead; ``shared``: the
    ``negatives`` items are drawn once per batch and scenario and every example of that scenario ranks them (the
    same sampler, ``negatives`` per positive for the item-tower cost of ``S * negatives`` items per batch).

    Default uniform, measured: a pairwise / sampled logistic loss against noise q learns the score
    log p(i|u) - log q(i), so q ~ popularity^0.75 ranks the popular items HR@K rewards down. On Douban (3 seeds,
    HR@20, ``pipelines/retrieval_benchmark.py``) unigram^0.75 puts SASS / SASS-Base / DSSM mix at 0.032 / 0.032 /
    0.030, under item popularity (0.044); uniform at 0.049 / 0.049 / 0.052 (YoutubeDNN mix 0.056)."""
    negatives_from: NegativesFrom = "sampled"   # sampled (the papers') | shared (a pool per batch) | batch (logQ)
    negative_sampler: NegativeSampler = "uniform"
    sampler_power: float = 0.75

    def check(self):
        if self.sampler_power < 0:
            raise params_.refuse("sampler_power", f"sampler_power must be >= 0, got {self.sampler_power!r}")
