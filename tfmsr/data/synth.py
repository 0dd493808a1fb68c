"""Planted multi-scenario click data: the embedded default dataset, with a known ground truth.

Generating process (all draws from one ``numpy.random.Generator(seed)``; rows are produced in time
order, chunk by chunk, so memory is bounded by users x history length, never by rows):

* **Scenarios** ``s = 0..S-1`` take a long-tail share of traffic (50/25/12/8/5 % for S = 5, Zipf(1.3)
  otherwise). Scenarios come in clusters of two (``cluster(s) = s // 2``): scenarios of one cluster are
  alike, scenarios of different clusters are not (switch ``scenario_clusters``: each scenario's cluster,
  e.g. ``[0, 0, 1, 1, 1]`` puts the long-tail scenario, alone in its cluster by default, beside s2 and s3 in
  the cluster that opposes the head's). Odd scenarios are search entrances and carry a query (switch
  ``search_scenarios``: the list of search entrances, e.g. ``[1, 3, 4]`` makes the long-tail scenario a
  search entrance too, as FIMN's *Trigger search* #D5). Neither switch changes any random draw.
* **Users** ``u`` (gender, age band, level, activity) and **items** ``i`` (category, brand, price) are
  shared by all scenarios. Each has a global vector ``g_u, g_i`` and a scenario-taste vector
  ``a_u, b_i`` in R^d, each the sum of an attribute part (age/gender, category) and an id part.
* **Scenario-specific preference**: scenario s weighs the taste dimensions by ``m_s = m_cluster(s) +
  0.25 * noise_s`` (m_0 ~ N(0, I); odd clusters ``-0.6 m_0 + 0.8 N(0, I)`` oppose the dominant cluster,
  even ones are independent), so ``spec = (a_u * m_s) . b_i / sqrt(d)`` agrees within a cluster and
  disagrees (even in sign) across clusters. ``stats.json`` records the cosine similarity of
  the ``m_s`` as ``generator.scenario_similarity``.
* **Implicit scenario** (MuSeNet): a latent ``z = hour // 6`` in 0..3 driven by the context feature
  ``hour``; z shifts the taste for categories (``T[z, cat]``) and the repeat effect (``rho_z``).
* **Behaviour**: each user keeps the last L clicked items (with their category and scenario), most
  recent first. Candidates: with the user's repeat propensity ``q_u ~ Beta(1.2, 4)`` an item already in
  the history (repeat consumption), else with prob. 0.3 an item of a category from the history, in a
  search scenario with prob. 0.6 an item of the query's category, else an item by popularity (Zipf).
* **Click** ``y ~ Bernoulli(sigmoid(logit))`` with::

    logit = b0 + bias_s + g_u.g_i / sqrt(d)                    global preference
          + 2.0 * spec_s(u, i)                                 scenario-specific preference
          + c_s^item mean_h w_h cos(g_h, g_i) + c_s^cat mean_h w_h [cat(h) = cat(i)]   interest from behaviour
          + (rho_z + 2 (q_u - 0.2)) * [i in history]           repeat effect
          + 0.8 * T[z, cat(i)] + 1.2 * [query = cat(i)] - 0.25 * price
          + omega * xi[i, s]                                   item-scenario appeal (0 unless switched on)

  **Behaviour-scenario effect** (SAINet's premise, switch ``behaviour_scenario = kappa`` in [0, 1],
  default 0): a behaviour's weight depends on the scenario it happened in, ``w_h = (1 - kappa) + kappa *
  sim(s_h, s)`` with ``sim`` the cosine of ``m_{s_h}`` and ``m_s`` above. With kappa = 1 a click made in a
  scenario of the same cluster counts fully, one made in an opposing cluster counts against the item.
  kappa = 0 (``w_h = 1``) is the generator without it, row for row.

  **Aspect intensity per scenario** (FIMN's premise: a scenario weighs the aspects of interest, item and
  category, differently; switch ``aspect_intensity = eta >= 0``, default 0): ``c_s^item = 1 + eta t_s``,
  ``c_s^cat = 1 - eta t_s`` with ``t_s = +1`` in a feed scenario and ``-1`` in a search entrance. With eta = 2
  a feed favours items like the past clicks and disfavours more of an already clicked category (novelty),
  a search entrance the reverse. eta = 0 (``c = 1``) is the generator without it, row for row.

  **Interest weight** (switch ``interest_weight = lambda >= 0``, default 1): both interest terms are scaled
  by lambda (``c_s^item = lambda (1 + eta t_s)``, ``c_s^cat = lambda (1 - eta t_s)``), so the premises that
  live in them (behaviour scenario, aspect intensity, local activation) weigh more against the id-level
  preferences. lambda = 1 is the generator without it, row for row.

  **Local activation** (DIN's premise, which FIMN's field-wise and SAINet's target attention build on: the
  past clicks relevant to the candidate drive the interest; switch ``local_activation = tau > 0``, default 0
  = off): ``mean_h`` in both interest terms becomes the attention average ``sum_h a_h``, ``a_h =
  softmax_h(cos(g_h, g_i) / tau)`` over the user's history, so the most similar past clicks dominate.

  **Item-scenario appeal** (SASS's premise, its challenge (3): one item is liked differently in different
  scenarios, so it needs a representation per scenario; switch ``item_scenario = omega >= 0``, default 0 =
  off): the logit gains ``omega * xi[i, s]``, ``xi ~ N(0, 1)`` per item and scenario, drawn from a stream of its
  own (spawned from the generator's), so omega = 0 is the generator without it, row for row, and omega > 0
  changes no other draw. It is item-level, not user-level: a user-independent appeal of the item in the
  scenario, which the item's click rate in that scenario estimates.

  ``oracle_p = sigmoid(logit)`` is stored with every row: its AUC is the ceiling of any model.
  **Premise headroom**: ``stats.json`` records under ``generator.premise_headroom`` the test AUC of the
  oracle logit and of the same logit with one planted effect taken out, i.e. the best AUC of a model that
  cannot see that effect: ``behaviour_scenario`` (``w_h`` replaced by its mean over the behaviours' scenario
  mix, taken as the traffic share: what is known without each behaviour's scenario), ``local_activation``
  (the plain history mean instead of the attention average), ``aspect_intensity`` (``c_s`` replaced by its
  traffic-weighted mean over scenarios), ``behaviour_interest`` (both interest terms dropped) and
  ``scenario_taste`` (every scenario's taste ``m_s`` replaced by the traffic-weighted mean ``sum_s p_s m_s``:
  what a model that cannot tell the scenarios' tastes apart sees, the premise of every scenario-specific
  module; per scenario it shows where training dominated by the head scenario costs most) and
  ``item_scenario`` (``xi[i, s]`` replaced by the item's traffic-weighted mean ``sum_s p_s xi[i, s]``: what a
  model with one representation per item sees). The gap to
  ``oracle`` bounds what a module built for that premise can win over its ablation; ``scenario_auc`` gives
  it per scenario.
  Clicked items enter the history after the row (the history a row sees is strictly earlier).
* **Splits** by time: the first ``1 - valid - test`` of the rows train, then valid, then test.

Extras per row: ``oracle_p``, ``latent_scenario`` (z), ``user_repeat_rate`` (the user's share of
repeat clicks so far; MuSeNet's auxiliary label).
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Optional, Sequence

import numpy as np

from tfmsr.data.tfrecord import DatasetWriter
from tfmsr.core.progress import ProgressLine
from tfmsr.features import Feature, Scenario, Schema

LATENT_SCENARIOS = 4
HOUR_BUCKET = 6


def traffic_shares(num_scenarios: int) -> np.ndarray:
    if num_scenarios == 5:
        p = np.array([0.50, 0.25, 0.12, 0.08, 0.05])
    else:
        p = 1.0 / np.arange(1, num_scenarios + 1) ** 1.3
    return p / p.sum()


def scenario_clusters(num_scenarios: int) -> np.ndarray:
    return np.arange(num_scenarios) // 2


def synth_schema(num_scenarios: int, users: int, items: int, categories: int, brands: int,
                 seq_len: int, dim: int = 16) -> Schema:
    names = [f"s{i}" for i in range(num_scenarios)]
    cat = lambda name, group, vocab: Feature(name, "categorical", group, vocab_size=vocab, dim=dim)
    feats = [
        cat("user_id", "user", users + 1), cat("gender", "user", 3), cat("age", "user", 8),
        cat("user_level", "user", 6), Feature("user_activity", "numeric", "user"),
        cat("item_id", "item", items + 1), cat("cate_id", "item", categories + 1),
        cat("brand_id", "item", brands + 1), Feature("price", "numeric", "item"),
        cat("hour", "context", 25), cat("device", "context", 4),
        cat("query_cate", "query", categories + 1),
        Feature("hist_item_id", "sequence", "behavior", share="item_id", length=seq_len),
        Feature("hist_cate_id", "sequence", "behavior", share="cate_id", length=seq_len),
        Feature("hist_scenario", "sequence", "behavior", vocab_size=num_scenarios + 1, dim=dim,
                length=seq_len),
    ]
    schema = Schema(
        scenario=Scenario("scenario", names), labels=["click"], features=feats,
        extras={"oracle_p": "float32", "latent_scenario": "int64", "user_repeat_rate": "float32"},
        oracle="oracle_p", user_key="user_id", source="synth")
    schema.validate()
    return schema


class _World:
    """The static part of the planted world: users, items, scenario tastes."""

    def __init__(self, rng, S, U, I, C, B, d, scenario_weight=2.0, id_noise=0.6, behaviour_scenario=0.0,
                 aspect_intensity=0.0, local_activation=0.0, interest_weight=1.0, search_scenarios=None,
                 clusters=None, item_scenario=0.0):
        self.scenario_weight, self.id_noise = scenario_weight, id_noise
        self.local_activation = local_activation
        self.behaviour_scenario = behaviour_scenario
        self.S, self.U, self.I, self.C, self.B, self.d = S, U, I, C, B, d
        n = rng.normal
        # users
        self.gender = rng.integers(0, 2, U)
        self.age = rng.choice(7, U, p=[0.08, 0.2, 0.25, 0.2, 0.12, 0.1, 0.05])
        act = rng.lognormal(0.0, 1.0, U)
        self.activity = act / act.sum()
        self.user_activity = np.log(act).astype(np.float32)  # log of a lognormal(0, 1): standardised
        self.level = np.clip((np.log(act) + 2.5) // 1.2, 0, 4).astype(np.int64)
        self.repeat_q = rng.beta(1.2, 4.0, U)
        age_g, gen_g, age_a, gen_a = n(0, 0.8, (7, d)), n(0, 0.5, (2, d)), n(0, 0.8, (7, d)), n(0, 0.5, (2, d))
        self.g_u = age_g[self.age] + gen_g[self.gender] + n(0, 0.6, (U, d))
        self.a_u = age_a[self.age] + gen_a[self.gender] + n(0, id_noise, (U, d))
        # items
        cat = np.concatenate([np.arange(C), rng.choice(C, I - C, p=_zipf(C, 1.0))])
        self.cat = rng.permutation(cat)
        self.brand = (self.cat * (B // C) + rng.integers(0, max(1, B // C), I)) % B
        self.price = rng.normal(0, 1, I).astype(np.float32)
        cat_g, cat_b = n(0, 0.8, (C, d)), n(0, 0.8, (C, d))
        self.g_i = cat_g[self.cat] + n(0, 0.6, (I, d))
        self.b_i = cat_b[self.cat] + n(0, id_noise, (I, d))
        self.g_i_unit = self.g_i / np.linalg.norm(self.g_i, axis=1, keepdims=True)
        self.popularity = _zipf(I, 0.9)[rng.permutation(I)]
        order = np.argsort(self.cat, kind="stable")
        self.items_by_cat = order
        self.cat_start = np.searchsorted(self.cat[order], np.arange(C))
        self.cat_count = np.bincount(self.cat, minlength=C)
        # scenarios
        self.traffic = traffic_shares(S)
        self.cluster = scenario_clusters(S) if clusters is None else np.asarray(clusters, np.int64)
        # as many cluster tastes as the default clusters need at least, so other clusters change no later draw
        m_cluster = n(0, 1, (max(self.cluster.max(), scenario_clusters(S).max()) + 1, d))
        m_cluster[1::2] = -0.6 * m_cluster[0] + 0.8 * m_cluster[1::2]  # odd clusters oppose the dominant one
        self.m = m_cluster[self.cluster] + 0.25 * n(0, 1, (S, d))
        self.bias_s = n(0, 0.3, S)
        # behaviour weight by (behaviour scenario + 1, target scenario); row 0 is padding
        k = behaviour_scenario
        self.behaviour_weight = np.vstack([np.zeros(S), (1.0 - k) + k * self.similarity()])
        self.search = np.zeros(S, bool)
        self.search[list(range(1, S, 2)) if search_scenarios is None else list(search_scenarios)] = True
        # interest weights (c_s^item, c_s^cat) per scenario
        t = np.where(self.search, -1.0, 1.0)
        self.aspect_weight = interest_weight * np.stack([1.0 + aspect_intensity * t, 1.0 - aspect_intensity * t],
                                                        axis=1)
        # implicit scenarios
        self.T = n(0, 1, (LATENT_SCENARIOS, C))
        self.rho = np.array([1.5, 0.5, -0.8, 0.0])[:LATENT_SCENARIOS]
        self.b0 = -2.9
        # item-scenario appeal: a stream of its own, so the switch changes no draw above or in the rows
        self.item_scenario = item_scenario
        self.xi = rng.spawn(1)[0].normal(0, 1, (I, S)) if item_scenario else np.zeros((I, S))

    def similarity(self) -> np.ndarray:
        unit = self.m / np.linalg.norm(self.m, axis=1, keepdims=True)
        return unit @ unit.T

    def items_of_cat(self, rng, cats):
        return self.items_by_cat[self.cat_start[cats] + (rng.random(len(cats)) * self.cat_count[cats]).astype(int)]


HEADROOM = ("behaviour_scenario", "local_activation", "aspect_intensity", "behaviour_interest", "scenario_taste",
            "item_scenario")


def _without_premises(w: _World, s, logit, aspect, att, mean, w_h, real, cos, cat_match, taste_gap,
                      item_gap) -> dict:
    """The click logit with one planted effect taken out, for each name of ``HEADROOM`` (module docstring,
    "Premise headroom"). ``att``: the history weights of the interest terms, ``mean``: the plain mean,
    ``taste_gap``: the scenario-specific term with the mean taste minus the one with the row's taste,
    ``item_gap``: the item-scenario appeal with the item's mean appeal minus the one in the row's scenario."""
    def interest(weights, w_h, c):
        return c[:, 0] * (weights * w_h * cos).sum(1) + c[:, 1] * (weights * w_h * cat_match).sum(1)

    rest = logit - interest(att, w_h, aspect)
    k = w.behaviour_scenario
    w_mix = (1.0 - k) + k * (w.traffic @ w.similarity())  # mean w_h of a target scenario over the mix
    return {"oracle": logit, "behaviour_scenario": rest + interest(att, real * w_mix[s][:, None], aspect),
            "local_activation": rest + interest(mean, w_h, aspect),
            "aspect_intensity": rest + interest(att, w_h, np.broadcast_to(w.traffic @ w.aspect_weight, aspect.shape)),
            "behaviour_interest": rest, "scenario_taste": logit + taste_gap, "item_scenario": logit + item_gap}


def _headroom(collected: dict) -> dict:
    """Test AUC (overall and per scenario) of the oracle logit and of each logit without a premise."""
    from tfmsr.core.metrics import auc, scenario_auc

    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in collected.items()}
    y, s = cat.pop("click"), cat.pop("scenario").astype(np.int64)
    if not len(y) or y.min() == y.max():
        return {}
    S = int(s.max()) + 1
    return {name: {"auc": round(auc(y, v), 4), "scenario_auc": [round(a, 4) for a in scenario_auc(y, v, s, S)]}
            for name, v in cat.items()}


def _softmax(x):
    """Row-wise softmax of ``x [n, L]``; entries of ``-inf`` get weight 0, a row of only ``-inf`` all zeros."""
    top = x.max(axis=1, keepdims=True)
    e = np.exp(x - np.where(np.isfinite(top), top, 0.0))
    total = e.sum(axis=1, keepdims=True)
    return e / np.where(total > 0, total, 1.0)


def _zipf(n, a):
    p = 1.0 / (np.arange(n) + 10.0) ** a
    return p / p.sum()


def _check_arguments(rows, scenarios, valid, test, behaviour_scenario, aspect_intensity, interest_weight,
                     local_activation, item_scenario, search_scenarios, clusters) -> None:
    """ValueError naming the first bad argument of ``generate``."""
    if rows < 100:
        raise ValueError(f"--rows must be at least 100, got {rows}")
    if not 0.0 <= behaviour_scenario <= 1.0:
        raise ValueError(f"behaviour_scenario must be in [0, 1], got {behaviour_scenario}")
    if not aspect_intensity >= 0.0:
        raise ValueError(f"aspect_intensity must be >= 0, got {aspect_intensity}")
    if not interest_weight >= 0.0:
        raise ValueError(f"interest_weight must be >= 0, got {interest_weight}")
    if not local_activation >= 0.0:
        raise ValueError(f"local_activation must be >= 0 (0 = off), got {local_activation}")
    if not item_scenario >= 0.0:
        raise ValueError(f"item_scenario must be >= 0 (0 = off), got {item_scenario}")
    if search_scenarios is not None:
        bad = [k for k in search_scenarios if not 0 <= k < scenarios]
        if bad or len(set(search_scenarios)) != len(search_scenarios):
            raise ValueError(f"search_scenarios must be distinct scenario indices in 0..{scenarios - 1}, "
                             f"got {list(search_scenarios)}")
    if clusters is not None and (len(clusters) != scenarios or min(clusters) < 0):
        raise ValueError(f"clusters must give each of the {scenarios} scenarios a cluster >= 0, got {list(clusters)}")
    if not 0 < valid + test < 1:
        raise ValueError(f"valid + test must be in (0, 1), got {valid} + {test}")


def _generator_info(w: _World, seed, rows, brands, scenario_weight, id_noise, behaviour_scenario, aspect_intensity,
                    interest_weight, item_scenario, local_activation) -> dict:
    """``stats.json["generator"]``: the settings and the planted truth (premise_headroom is added at the end)."""
    return {"generator": {
        "seed": seed, "rows": rows, "scenario_weight": scenario_weight, "id_noise": id_noise,
        "behaviour_scenario": behaviour_scenario, "aspect_intensity": aspect_intensity,
        "interest_weight": interest_weight, "item_scenario": item_scenario,
        "aspect_weight": np.round(w.aspect_weight, 4).tolist(), "local_activation": local_activation, "users": w.U,
        "items": w.I, "categories": w.C, "brands": brands,
        "latent_scenarios": LATENT_SCENARIOS, "scenario_clusters": w.cluster.tolist(),
        "search_scenarios": np.flatnonzero(w.search).tolist(),
        "scenario_similarity": np.round(w.similarity(), 4).tolist(),
        "implicit_scenario": f"latent_scenario = (hour - 1) // {HOUR_BUCKET}",
    }}


def generate(out_dir: str, rows: int = 200_000, scenarios: int = 5, seed: int = 0, users: Optional[int] = None,
             items: Optional[int] = None, categories: int = 50, brands: int = 400, seq_len: int = 30,
             latent_dim: int = 8, valid: float = 0.1, test: float = 0.1, rows_per_shard: int = 50_000,
             chunk: int = 20_000, compression: Optional[str] = None, overwrite: bool = False,
             scenario_weight: float = 2.0, id_noise: float = 0.6, behaviour_scenario: float = 0.0,
             aspect_intensity: float = 0.0, local_activation: float = 0.0, interest_weight: float = 1.0,
             search_scenarios: Optional[Sequence[int]] = None, clusters: Optional[Sequence[int]] = None,
             item_scenario: float = 0.0, progress: bool = True, layout: Optional[str] = None) -> dict:
    """Stream ``rows`` planted rows into ``out_dir`` (shards + schema.yaml + stats.json); returns the stats.
    ``search_scenarios``: the scenarios that are search entrances (default: the odd ones); ``clusters``: the
    cluster of each scenario (default ``s // 2``); ``layout``: the shards' record layout (``tfmsr.data.layout``,
    default ``DEFAULT_LAYOUT``)."""
    _check_arguments(rows, scenarios, valid, test, behaviour_scenario, aspect_intensity, interest_weight,
                     local_activation, item_scenario, search_scenarios, clusters)
    U = users or max(500, min(20_000, rows // 20))
    I = items or max(200, min(20_000, rows // 40))
    C = min(categories, I)
    rng = np.random.default_rng(seed)
    w = _World(rng, scenarios, U, I, C, brands, latent_dim, scenario_weight, id_noise, behaviour_scenario,
               aspect_intensity, local_activation, interest_weight, search_scenarios, clusters, item_scenario)
    schema = synth_schema(scenarios, U, I, C, brands, seq_len)
    extra = _generator_info(w, seed, rows, brands, scenario_weight, id_noise, behaviour_scenario, aspect_intensity,
                            interest_weight, item_scenario, local_activation)
    with DatasetWriter(out_dir, schema, rows_per_shard=rows_per_shard, compression=compression,
                       overwrite=overwrite, extra_stats=extra, layout=layout) as writer:
        headroom = _write_rows(writer, rng, w, rows, seq_len, valid, test, chunk, progress)
        # the writer holds ``extra`` (not a copy of its inner dicts) and writes it on exit
        extra["generator"]["premise_headroom"] = headroom
    return writer.stats.result() | extra


def _write_rows(writer, rng, w: _World, rows: int, seq_len: int, valid: float, test: float, chunk: int,
                progress: bool) -> dict:
    """The rows in time order, ``chunk`` at a time, to their splits (the first train, then valid, then test);
    returns the premise headroom measured on the test rows."""
    history = _History.empty(w.U, seq_len)
    n_train = int(rows * (1 - valid - test))
    n_valid = int(rows * valid)
    headroom = {name: [] for name in ("oracle", "click", "scenario") + HEADROOM}
    report = ProgressLine("synth", rows, "rows")
    done = 0
    while done < rows:
        n = min(chunk, rows - done)
        start = done
        first_test = max(n_train + n_valid, start) - start
        alt = {} if first_test < n else None  # the premise headroom is measured on test rows only
        cols = _chunk(rng, w, n, *history.arrays(), alt)
        if alt is not None:
            alt |= {"click": cols["click"], "scenario": cols["scenario"]}
            for name, values in alt.items():
                headroom[name].append(values[first_test:])
        for split, lo, hi in (("train", 0, n_train), ("valid", n_train, n_train + n_valid),
                              ("test", n_train + n_valid, rows)):
            a, b = max(lo, start) - start, min(hi, start + n) - start
            if a < b:
                writer.write(split, {k: v[a:b] for k, v in cols.items()})
        done += n
        if progress:
            report.update(done)
    result = _headroom(headroom)
    if progress:
        report.close()
    return result


class _History:
    """Per-user state across chunks: the last L clicked items, categories and scenarios (ids + 1, 0 = padding,
    most recent first) and the click / repeat-click counts."""

    def __init__(self, item: np.ndarray, cat: np.ndarray, sc: np.ndarray, clicks: np.ndarray,
                 repeat_clicks: np.ndarray):
        self.item, self.cat, self.sc, self.clicks, self.repeat_clicks = item, cat, sc, clicks, repeat_clicks

    @classmethod
    def empty(cls, users: int, length: int) -> "_History":
        return cls(*[np.zeros((users, length), np.int64) for _ in range(3)], np.zeros(users, np.int64),
                   np.zeros(users, np.int64))

    def arrays(self) -> tuple:
        """The arrays in the order ``_chunk`` takes them (updated in place)."""
        return self.item, self.cat, self.sc, self.clicks, self.repeat_clicks

    def add_clicks(self, r: SimpleNamespace, y: np.ndarray) -> None:
        """Clicked items enter the history (after the row)."""
        cu = r.u[y]
        if len(cu):
            self.item[cu] = np.concatenate([(r.item[y] + 1)[:, None], self.item[cu, :-1]], axis=1)
            self.cat[cu] = np.concatenate([(r.cat[y] + 1)[:, None], self.cat[cu, :-1]], axis=1)
            self.sc[cu] = np.concatenate([(r.s[y] + 1)[:, None], self.sc[cu, :-1]], axis=1)
            self.clicks[cu] += 1
            self.repeat_clicks[cu] += r.is_rep[y]


def _ranks(users: np.ndarray) -> np.ndarray:
    """Occurrence rank of each row among its user's rows in this chunk: rows of equal rank have distinct users
    and are processed together (vectorised), ranks in time order."""
    n = len(users)
    order = np.argsort(users, kind="stable")
    su = users[order]
    first = np.r_[True, su[1:] != su[:-1]]
    rank_sorted = np.arange(n) - np.maximum.accumulate(np.where(first, np.arange(n), 0))
    rank = np.empty(n, np.int64)
    rank[order] = rank_sorted
    return rank


def _empty_rows(n: int, L: int) -> dict:
    out = {k: np.zeros(n, np.int64) for k in ("user_id", "gender", "age", "user_level", "item_id", "cate_id",
                                              "brand_id", "hour", "device", "query_cate", "scenario",
                                              "latent_scenario")}
    for k in ("user_activity", "price", "click", "oracle_p", "user_repeat_rate"):
        out[k] = np.zeros(n, np.float32)
    for k in ("hist_item_id", "hist_cate_id", "hist_scenario"):
        out[k] = np.zeros((n, L), np.int64)
    return out


def _chunk(rng, w: _World, n, hist_item, hist_cat, hist_sc, clicks, repeat_clicks, headroom=None) -> dict:
    """n rows in time order; a user's later rows in the chunk see the clicks of its earlier rows (the user
    state arrays of ``_History``, updated in place). With ``headroom`` (a dict), also fills ``headroom[name]
    [n]`` with the logit without each premise (see :func:`_without_premises`); no random draw depends on it."""
    history = _History(hist_item, hist_cat, hist_sc, clicks, repeat_clicks)
    if headroom is not None:
        headroom.update({name: np.zeros(n) for name in ("oracle",) + HEADROOM})
    users = rng.choice(w.U, n, p=w.activity)
    rank = _ranks(users)
    out = _empty_rows(n, history.item.shape[1])
    for r in range(int(rank.max()) + 1):
        idx = np.flatnonzero(rank == r)
        rows = _draw_rows(rng, w, history, users[idx])
        _click_logit(w, rows)
        p = 1.0 / (1.0 + np.exp(-rows.logit))
        y = rng.random(len(idx)) < p
        if headroom is not None:
            for name, value in _headroom_logits(w, rows).items():
                headroom[name][idx] = value
        _store(out, idx, w, rows, history, y, p)
        history.add_clicks(rows, y)
    return out


def _draw_rows(rng, w: _World, history: _History, u: np.ndarray) -> SimpleNamespace:
    """The scenario, context, query and candidate item of one row per user ``u``."""
    m = len(u)
    s = rng.choice(w.S, m, p=w.traffic)
    hour = rng.integers(0, 24, m)
    z = hour // HOUR_BUCKET
    device = rng.integers(0, 3, m)
    hi, hc, hs = history.item[u], history.cat[u], history.sc[u]
    hlen = (hi != 0).sum(axis=1)
    # query: search scenarios ask for a category, often one from the user's history
    search = w.search[s]
    fav = np.where(hlen > 0, hc[np.arange(m), (rng.random(m) * np.maximum(hlen, 1)).astype(int)] - 1, -1)
    qcat = np.where(fav >= 0, fav, rng.integers(0, w.C, m))
    qcat = np.where(rng.random(m) < 0.5, qcat, rng.integers(0, w.C, m))
    # candidate item
    item = rng.choice(w.I, m, p=w.popularity)
    from_cat = (rng.random(m) < 0.3) & (fav >= 0)
    item = np.where(from_cat, w.items_of_cat(rng, np.maximum(fav, 0)), item)
    from_query = search & (rng.random(m) < 0.6)
    item = np.where(from_query, w.items_of_cat(rng, qcat), item)
    rep_draw = (rng.random(m) < w.repeat_q[u]) & (hlen > 0)
    rep_item = hi[np.arange(m), (rng.random(m) * np.maximum(hlen, 1)).astype(int)] - 1
    item = np.where(rep_draw, rep_item, item)
    cat = w.cat[item]
    is_rep = ((hi == (item + 1)[:, None]).any(axis=1))
    return SimpleNamespace(u=u, s=s, hour=hour, z=z, device=device, hi=hi, hc=hc, hs=hs, hlen=hlen, search=search,
                           qcat=qcat, item=item, cat=cat, is_rep=is_rep)


def _click_logit(w: _World, r: SimpleNamespace) -> None:
    """The click logit of the rows (see the module docstring) and its terms, set on ``r``."""
    u, s, hi, hc, hlen, item, cat = r.u, r.s, r.hi, r.hc, r.hlen, r.item, r.cat
    r.d = d = math.sqrt(w.d)
    glob = (w.g_u[u] * w.g_i[item]).sum(1) / d
    r.spec = (w.a_u[u] * w.m[s] * w.b_i[item]).sum(1) / d
    r.w_h = w_h = w.behaviour_weight[r.hs, s[:, None]]  # 0 on padding
    hvec = w.g_i_unit[np.maximum(hi - 1, 0)]
    r.cos = cos = (hvec * w.g_i_unit[item][:, None, :]).sum(-1)
    r.cat_match = cat_match = hc == (cat + 1)[:, None]
    r.mean = (hi > 0) / np.maximum(hlen, 1)[:, None]  # plain history mean, 0 on padding
    if w.local_activation:
        r.att = att = _softmax(np.where(hi > 0, cos / w.local_activation, -np.inf))  # 0 on padding
        interest, same_cat = (att * w_h * cos).sum(1), (att * w_h * cat_match).sum(1)
    else:
        r.att = r.mean
        interest = np.where(hlen > 0, (cos * w_h).sum(1) / np.maximum(hlen, 1), 0.0)
        same_cat = np.where(hlen > 0, (cat_match * w_h).sum(1) / np.maximum(hlen, 1), 0.0)
    rep_eff = (w.rho[r.z] + 2.0 * (w.repeat_q[u] - 0.2)) * r.is_rep
    qmatch = r.search & (r.qcat == cat)
    r.aspect = aspect = w.aspect_weight[s]
    r.logit = (w.b0 + w.bias_s[s] + glob + w.scenario_weight * r.spec + aspect[:, 0] * interest
               + aspect[:, 1] * same_cat + rep_eff
               + 0.8 * w.T[r.z, cat] + 1.2 * qmatch - 0.25 * w.price[item] + w.item_scenario * w.xi[item, s])


def _headroom_logits(w: _World, r: SimpleNamespace) -> dict:
    """The logit without each premise (``_without_premises``) for the rows ``r``."""
    mean_taste = (w.a_u[r.u] * (w.traffic @ w.m) * w.b_i[r.item]).sum(1) / r.d
    item_gap = w.item_scenario * (w.xi[r.item] @ w.traffic - w.xi[r.item, r.s])
    return _without_premises(w, r.s, r.logit, r.aspect, r.att, r.mean, r.w_h, r.hi > 0, r.cos, r.cat_match,
                             w.scenario_weight * (mean_taste - r.spec), item_gap)


def _store(o: dict, idx: np.ndarray, w: _World, r: SimpleNamespace, history: _History, y, p) -> None:
    """The rows ``r`` into the chunk's columns ``o`` at ``idx``."""
    u, item = r.u, r.item
    o["user_id"][idx], o["gender"][idx], o["age"][idx] = u + 1, w.gender[u] + 1, w.age[u] + 1
    o["user_level"][idx], o["user_activity"][idx] = w.level[u] + 1, w.user_activity[u]
    o["item_id"][idx], o["cate_id"][idx], o["brand_id"][idx] = item + 1, r.cat + 1, w.brand[item] + 1
    o["price"][idx], o["hour"][idx], o["device"][idx] = w.price[item], r.hour + 1, r.device + 1
    o["query_cate"][idx] = np.where(r.search, r.qcat + 1, 0)
    o["scenario"][idx], o["latent_scenario"][idx] = r.s, r.z
    o["hist_item_id"][idx], o["hist_cate_id"][idx], o["hist_scenario"][idx] = r.hi, r.hc, r.hs
    o["click"][idx], o["oracle_p"][idx] = y, p
    o["user_repeat_rate"][idx] = history.repeat_clicks[u] / np.maximum(history.clicks[u], 1)
