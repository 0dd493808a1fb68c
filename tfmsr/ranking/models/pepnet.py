"""PEPNet (Chang et al., "PEPNet: Parameter and Embedding Personalized Network for Infusing with
Personalized Prior Information", KDD 2023)."""
from dataclasses import dataclass
from typing import List, Optional

import tensorflow as tf
import tf_keras as keras

from tfmsr.core.errors import ConfigError
from tfmsr.core.params import default
from tfmsr.layers import EPNet, PPNet, ScenarioDense, ScenarioMLP
from tfmsr.ranking.models.base import RankingModel, register


@register("pepnet")
class PEPNet(RankingModel):
    """PEPNet (Chang et al. 2023): EPNet scenario gate on the embeddings, PPNet prior gates on tower layers.

    Chang et al. 2023, Sec. 3: ``E`` is the concatenation of all feature embeddings (without the scenario),
    the domain side ``E(F_d)`` is the scenario embedding; EPNet (:class:`~tfmsr.layers.EPNet`):
    ``O_ep = GateNU(E(F_d) (+) stop_grad(E)) (x) E``. PPNet (:class:`~tfmsr.layers.PPNet`): the prior
    ``O_prior`` is the embeddings of the ``prior_groups`` categorical features (user and item ids and
    attributes, the paper's user/item/author priors) and each tower layer ``l`` is rescaled by
    ``GateNU_l(O_prior (+) stop_grad(O_ep))``; Gate NU ``gamma = 2``.

    Multi-scenario reading (the paper personalises *tasks* with PPNet and *domains* with EPNet):
    ``scenario_towers: false`` (default) is one tower whose gates are scenario-conditioned (the scenario
    embedding joins ``O_prior``), so every example trains every weight and scenarios differ through the
    gates; ``scenario_towers: true`` builds one PPNet tower per scenario, stacked (multi-head, each tower
    trained by its own scenario only; training runs the own tower, ``scenario_probs`` all in one pass). ``epnet: false`` / ``ppnet: false`` are the ablations (plain embeddings / plain
    MLP tower).
    """

    @dataclass
    class Params(RankingModel.Params):
        hidden: List[int] = default([256, 128, 64])
        gate_hidden: Optional[int] = None    # GateNU hidden width (None: the gated input width)
        gamma: float = 2.0
        epnet: bool = True
        ppnet: bool = True
        prior_groups: List[str] = default(["user", "item"])
        scenario_towers: bool = False
        dropout: float = 0.0

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        self.multi_head = self.own_head = bool(p.scenario_towers)
        if p.ppnet and self.multi_head and not any(schema.group(g, "categorical") for g in p.prior_groups):
            raise ConfigError(f"model 'pepnet': prior_groups {p.prior_groups} hold no categorical feature "
                              "for the PPNet gates")
        self.epnet = EPNet(p.gate_hidden, p.gamma, name="epnet") if p.epnet else None
        S = self.num_scenarios if self.multi_head else None
        if p.ppnet:
            tower = lambda name: PPNet(p.hidden, p.gate_hidden, p.gamma, dropout=p.dropout,  # noqa: E731
                                       num_scenarios=S, name=name)
        else:
            tower = lambda name: (ScenarioMLP(S, p.hidden, dropout=p.dropout, name=name) if S  # noqa: E731
                                  else keras.Sequential([keras.layers.Dense(h, activation="relu") for h in p.hidden],
                                                        name=name))
        if S:   # one stacked tower and head: [S, ...] variables (towers/dense_<i>, towers/gate_nu_<i>, heads)
            self.towers, self.heads = tower("towers"), ScenarioDense(S, 1, name="heads")
        else:
            self.towers, self.heads = [tower("tower_0")], [keras.layers.Dense(1, name="head_0")]

    def prior(self, x):
        parts = [e for g in self.params.prior_groups for e in self.embedding.group(x, g)]
        if not self.multi_head:
            parts.append(self.embedding.scenario(x))
        return tf.concat(parts, axis=-1)

    def logits(self, x, training=False, own=False):
        """The logit ``[B]``; with ``scenario_towers``: every scenario's tower ``[B, S]`` (one einsum per layer),
        or the own scenario's ``[B]`` (``own``: one tower's FLOPs)."""
        h = self.flat_inputs(x, with_scenario=False)
        if self.epnet is not None:
            h = self.epnet(h, self.embedding.scenario(x))
        prior = self.prior(x) if self.params.ppnet else None
        if not self.multi_head:
            z = self.towers[0](h, prior, training=training) if prior is not None else \
                self.towers[0](h, training=training)
            return self.heads[0](z)[:, 0]
        sc = x[self.schema.scenario.name] if own else None
        z = self.towers(h, prior, sc, training=training) if prior is not None else \
            self.towers(h, sc, training=training)
        return self.heads(z, sc)[..., 0]
