"""PEPNet (Chang et al., "PEPNet: Parameter and Embedding Personalized Network for Infusing with
Personalized Prior Information", KDD 2023)."""
import tensorflow as tf
import tf_keras as keras

from tfmsr.core.errors import ConfigError
from tfmsr.layers import EPNet, PPNet
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
    gates; ``scenario_towers: true`` builds one PPNet tower per scenario (multi-head, each tower trained by
    its own scenario only). ``epnet: false`` / ``ppnet: false`` are the ablations (plain embeddings / plain
    MLP tower).
    """

    defaults = {"hidden": [256, 128, 64], "gate_hidden": None, "gamma": 2.0, "epnet": True, "ppnet": True,
                "prior_groups": ["user", "item"], "scenario_towers": False, "dropout": 0.0}

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        self.multi_head = bool(p["scenario_towers"])
        if p["ppnet"] and self.multi_head and not any(schema.group(g, "categorical") for g in p["prior_groups"]):
            raise ConfigError(f"model 'pepnet': prior_groups {p['prior_groups']} hold no categorical feature "
                              "for the PPNet gates")
        self.epnet = EPNet(p["gate_hidden"], p["gamma"], name="epnet") if p["epnet"] else None
        n_towers = self.num_scenarios if self.multi_head else 1
        if p["ppnet"]:
            self.towers = [PPNet(p["hidden"], p["gate_hidden"], p["gamma"], dropout=p["dropout"], name=f"tower_{t}")
                           for t in range(n_towers)]
        else:
            self.towers = [keras.Sequential([keras.layers.Dense(h, activation="relu") for h in p["hidden"]],
                                            name=f"tower_{t}") for t in range(n_towers)]
        self.heads = [keras.layers.Dense(1, name=f"head_{t}") for t in range(n_towers)]

    def prior(self, x):
        parts = [e for g in self.params["prior_groups"] for e in self.embedding.group(x, g)]
        if not self.multi_head:
            parts.append(self.embedding.scenario(x))
        return tf.concat(parts, axis=-1)

    def logits(self, x, training=False):
        h = self.flat_inputs(x, with_scenario=False)
        if self.epnet is not None:
            h = self.epnet(h, self.embedding.scenario(x))
        prior = self.prior(x) if self.params["ppnet"] else None
        out = []
        for tower, head in zip(self.towers, self.heads):
            z = tower(h, prior, training=training) if prior is not None else tower(h, training=training)
            out.append(head(z))
        out = tf.concat(out, axis=1)
        return out if self.multi_head else out[:, 0]
