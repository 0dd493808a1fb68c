"""Serving functions of a trained model, built from the schema (DESIGN section 6).

Inputs, one named tensor per raw feature, batch-major, in the dtype of ``Schema.raw_dtype``:

    categorical   int64 [None]          an id; a table with a vocabulary: its raw value, string or int64;
                                        hashed features: string [None], the raw value
    numeric       float32 [None]        (raw value; the graph standardises it like training)
    sequence      int64 [None, None]    (string for a string vocabulary or hashed) most recent first,
                                        right-padded with 0 (""); any width: the graph truncates / pads
                                        to the schema length L
    scenario      int64 [None]          index in [0, S) (only where the servable routes by it)

Raw values of a table with a vocabulary are mapped to ids inside the graph (``tfmsr.features.lookup``: a
stock hash table built from the vocabulary file, which the SavedModel carries under ``assets/``): the
missing value ("" or 0) is id 0, an unknown value is out-of-vocabulary and scored like id 0, as in training.

or ``examples``: string [None] of serialized ``tf.train.Example`` parsed with the schema's spec (labels
and extras are not required; a missing feature fails the request, naming the feature).

Numeric features ingest derives from a key's train labels (``item_rate``, ``item_train_n``) are no input
when the export carries their table (``tfmsr.serving.rates``): the graph computes them from the key's raw
value; in ``examples`` a record's own value wins where present (a shard's).

Outputs: ``prob`` float32 [None]; the ``all_scenarios`` signature also gives ``probs`` [None, S].

A scenario servable answers "the click probability of this request in scenario s": the model run with
the scenario input set to s (for a multi-head model this is head s, for a single-tower model the tower
fed scenario s). Its inputs are the features without the scenario; an ``examples`` record that carries
a scenario has it ignored. The routed function checks the scenario with a stock ``Assert`` op: a value
outside [0, S) fails the request with InvalidArgument naming the valid scenarios.

A scenario servable is traced with the scenario a constant (``tf.fill([B], s)``): the scenario layers see it
(``tfmsr.layers.scenario.fixed_id``) and use slice ``s`` of their stacked weights directly, so its graph has
``O(1)`` ops in S wherever the model's maths allows, and it reads those slices from variables of its own
(``RowSlices``: ``<variable>/row_<s>``), so it carries ``1/S`` of the stacked weights and an export's disk is
``O(S)``. Models whose maths reads every scenario's branch keep those parts whole in every scenario servable:
SAML's mutual unit, FIMN's SMM, HiNet's SAN, PLE's lower-level shared gate over every scenario's experts, and
any multi-head model without an own-head path (its ``[B, S]`` heads, then column ``s``).

The ``all`` servable has ``serving_default`` (routed by the scenario input), ``examples`` and
``all_scenarios``; the S per-scenario named signatures (same answers as ``serving_default`` with the scenario
set, or as a scenario servable) are added only up to ``NAMED_SIGNATURES_MAX`` scenarios: beyond, each is one
more traced graph and warm-up request in ``all`` and a TF Serving client routes by the scenario input or calls
the scenario's own servable instead. Beside its signatures ``all`` holds ``scoring`` (``tfmsr score``'s function:
``serving_default``'s answer and each row's out-of-vocabulary id count per feature, from the same lookups).

Everything here is traced into stock TensorFlow ops; the functions capture only the model's variables (and a
scenario servable's row slices of them).
"""
from __future__ import annotations

import re
from typing import Dict, List

import numpy as np
import tensorflow as tf

from tfmsr.data.guards import guard_batch
from tfmsr.data.pipeline import make_parser, parse_spec
from tfmsr.features import Schema
from tfmsr.features.lookup import VocabLookups, oov_per_row, read_vocabulary

RESERVED = ("all", "serving_default", "examples", "all_scenarios")
NAMED_SIGNATURES_MAX = 16   # ``all`` has one named signature per scenario up to this many scenarios


def servable_names(schema: Schema) -> List[str]:
    """One directory / signature name per scenario: the scenario name with characters outside
    ``[A-Za-z0-9_.-]`` replaced by ``_``; a name that collides with another or with ``RESERVED``
    gets ``_<index>`` appended."""
    names: List[str] = []
    for i, value in enumerate(schema.scenario.values):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", value).strip(".") or f"scenario{i}"
        if name in RESERVED or name in names:
            name = f"{name}_{i}"
        names.append(name)
    return names


def input_dtype(schema: Schema, name: str) -> tf.DType:
    if name == schema.scenario.name:
        return tf.int64
    return {"float32": tf.float32, "string": tf.string, "int64": tf.int64}[schema.raw_dtype(schema.feature(name))]


def input_signature(schema: Schema, with_scenario: bool = True, skip=()) -> Dict[str, tf.TensorSpec]:
    """Named per-feature input specs (see the module docstring); ``skip``: features the graph computes
    (``tfmsr.serving.rates``), not asked for."""
    names = ([schema.scenario.name] if with_scenario else []) + [f.name for f in schema.features if f.name not in skip]
    out = {}
    for name in names:
        seq = name != schema.scenario.name and schema.feature(name).kind == "sequence"
        out[name] = tf.TensorSpec([None, None] if seq else [None], input_dtype(schema, name), name=name)
    return out


def fit_sequences(x: Dict[str, tf.Tensor], schema: Schema) -> Dict[str, tf.Tensor]:
    """Sequences of any width -> ``[B, L]``: the first L entries (most recent), right-padded (sequences
    absent from ``x`` are left out: a servable may read only some features)."""
    x = dict(x)
    for f in schema.of_kind("sequence"):
        if f.name not in x:
            continue
        seq = x[f.name][:, :f.length]
        pad = tf.constant("" if seq.dtype == tf.string else 0, seq.dtype)
        seq = tf.pad(seq, [[0, 0], [0, f.length - tf.shape(seq)[1]]], constant_values=pad)
        x[f.name] = tf.reshape(seq, [-1, f.length])
    return x


def id_signature(schema: Schema, lookups: VocabLookups, with_scenario: bool = True,
                 names=None) -> Dict[str, tf.TensorSpec]:
    """The model's inputs after parsing / lookups (what a head takes; only ``names`` if given): vocabulary
    tables as int64 ids, sequences ``[None, L]``, everything else as its named input."""
    out = {}
    for name, spec in input_signature(schema, with_scenario).items():
        if names is None or name in names:
            shape = [None, schema.feature(name).length] if spec.shape.rank == 2 else [None]
            out[name] = tf.TensorSpec(shape, tf.int64 if lookups.of(name) is not None else spec.dtype, name=name)
    return out


def trace(fn, signature):
    """``fn`` traced once into a concrete function. Without AutoGraph first (it would convert all of
    Keras' call stack: ~6x slower export); a model whose call needs it (Python control flow on tensors)
    is traced with it."""
    try:
        return tf.function(fn, input_signature=signature, autograph=False).get_concrete_function()
    except (tf.errors.OperatorNotAllowedInGraphError, TypeError):
        return tf.function(fn, input_signature=signature).get_concrete_function()


EXAMPLES_SPEC = tf.TensorSpec([None], tf.string, name="examples")


def examples_parser(schema: Schema, lookups: VocabLookups, rates=None, with_scenario: bool = True, names=None):
    """Serialized ``tf.Example`` s -> the model's inputs (ids; only ``names`` if given). With ``rates``
    (``tfmsr.serving.rates.RateLookups``) its features are optional in a record: a value the record
    carries is used (a dataset's shard), else the graph computes it from the key's raw value."""
    spec = {k: v for k, v in parse_spec(schema, inputs_only=True, with_scenario=with_scenario).items()
            if names is None or k in names}
    if not rates:
        return make_parser(schema, inputs_only=True, with_scenario=with_scenario, lookups=lookups, spec=spec)
    given = {n: tf.io.FixedLenFeature([], tf.float32, default_value=np.nan) for n in rates.names}
    parse = make_parser(schema, inputs_only=True, with_scenario=with_scenario, raw=True,
                        spec={k: v for k, v in spec.items() if k not in given})

    def fn(serialized):
        return lookups(rates(parse(serialized), tf.io.parse_example(serialized, given)))
    return fn


def feature_signatures(schema: Schema, names, fn, lookups: VocabLookups, rates=None) -> Dict[str, object]:
    """``serving_default`` (one named tensor per feature in ``names``, see the module docstring) and
    ``examples`` (serialized ``tf.Example`` s; only ``names`` are parsed, other features in a record are
    ignored), both ``-> fn(features)`` with sequences fitted to the schema length and raw values mapped
    to ids by ``lookups`` (which the servable must track). For servables that read a subset of the
    features (the retrieval user and item towers). ``rates``: features computed from their key's raw
    value (``examples_parser``), left out of ``serving_default``'s inputs."""
    names = set(names)
    rates = rates.only(names) if rates else None
    skip = rates.names if rates else ()
    spec = {k: v for k, v in input_signature(schema, with_scenario=False, skip=skip).items() if k in names}
    parse = examples_parser(schema, lookups, rates, with_scenario=False, names=names)
    head = trace(fn, [id_signature(schema, lookups, with_scenario=False, names=names)])   # fn traced once
    computed = rates or (lambda x: x)
    return {"serving_default": trace(lambda x: head(lookups(fit_sequences(computed(x), schema))), [spec]),
            "examples": trace(lambda examples: head(parse(examples)), [EXAMPLES_SPEC])}


def _as_prob(p: tf.Tensor) -> tf.Tensor:
    """A model's probabilities as a servable's ``prob`` output: float32 ``[B]``."""
    return tf.reshape(tf.cast(p, tf.float32), [-1])


class ServingFunctions:
    """The ``tf.function`` s exported for one trained model (each traced once, shared by servables);
    ``lookups``: the vocabulary tables they read (every servable tracks them: assets/<file>). The model
    is traced once per head (``routed``, ``all_scenarios``, scenario ``s``) on id-level inputs; the named-input
    and examples signatures are thin wrappers that map their inputs to ids and call the head's concrete
    function (a StatefulPartitionedCall of one library function in the SavedModel: no re-trace)."""

    def __init__(self, model, schema: Schema, rates=None):
        self.model, self.schema = model, schema
        self.lookups = VocabLookups(schema)
        self.rates = rates   # features computed from their key's raw value (``tfmsr.serving.rates``), or None
        self.computed = rates.names if rates else []
        self.key, self.S = schema.scenario.name, schema.num_scenarios
        self.names = servable_names(schema)
        self._cache, self._slices = {}, {}

    def inputs(self, with_scenario: bool = True) -> Dict[str, tf.TensorSpec]:
        """The named inputs of the servables (the computed features left out)."""
        return input_signature(self.schema, with_scenario, skip=self.computed)

    # ------------------------------------------------------------------ graph pieces
    def _checked_scenario(self, x):
        sc = tf.cast(x[self.key], tf.int64)
        ok = (sc >= 0) & (sc < self.S)
        valid = ", ".join(f"{i}={n}" for i, n in enumerate(self.schema.scenario.values))
        check = tf.debugging.Assert(
            tf.reduce_all(ok),
            [f"input '{self.key}' must be a scenario index in [0, {self.S}) ({valid}); got", tf.boolean_mask(sc, ~ok)],
            summarize=8)
        with tf.control_dependencies([check]):
            return tf.identity(sc)

    def _named(self, x):
        """Named raw inputs -> the model's inputs: numeric values checked finite (``tfmsr.data.guards``, as
        the examples signatures' parser does), sequences fitted, raw values mapped to ids."""
        x = guard_batch(self.rates(x) if self.rates else x, self.schema, "error", labels=False, scenario=False)
        return self.lookups(fit_sequences(x, self.schema))

    def _routed(self, x, parsed=False):
        x = dict(x) if parsed else self._named(x)   # a copy: a traced function's input is not modified
        x[self.key] = self._checked_scenario(x)
        return x

    def _fixed(self, x, s):
        x = dict(x)   # a copy: a traced function's input is not modified
        first = next(iter(x.values()))
        x[self.key] = tf.fill(tf.shape(first)[:1], tf.constant(s, tf.int64))
        return x

    def _prob(self, x):
        return {"prob": _as_prob(self.model(x, training=False))}

    def _function(self, key, fn, signature, scenario=None):
        """``fn`` traced once per ``key``; with a fixed ``scenario``: inside that scenario's ``RowSlices``."""
        if key not in self._cache:
            if scenario is None:
                self._cache[key] = trace(fn, signature)
            else:
                from tfmsr.layers.scenario import RowSlices   # here: scoring imports this module, not the layers
                if scenario not in self._slices:    # made here, eagerly: a variable made while tracing retraces
                    stacked = [v for v in self.model.variables if v.shape.rank and v.shape[0] == self.S]
                    self._slices[scenario] = RowSlices(stacked, scenario)
                with self._slices[scenario]:
                    self._cache[key] = trace(fn, signature)
        return self._cache[key]

    def variables(self, sigs) -> List[tf.Variable]:
        """The variables the concrete functions ``sigs`` (name -> function) read, each once: what their
        servable must hold (a scenario servable: the model's unstacked variables and its row slices)."""
        seen = {}
        for fn in sigs.values():
            for v in fn.variables:
                seen.setdefault(id(v), v)
        return list(seen.values())

    # ------------------------------------------------------------------ heads: the model traced once each
    def _routed_head(self):
        """Ids incl. the checked scenario -> own-scenario ``prob``: the one trace of the model behind
        ``serving_default`` and ``examples`` of ``all``."""
        return self._function("routed_head", self._prob, [id_signature(self.schema, self.lookups)])

    def _scenario_head(self, s: int):
        """Ids without the scenario -> ``prob`` in scenario ``s`` (traced in its ``RowSlices``): the one trace
        behind scenario ``s``'s named signature in ``all`` and its servable's two signatures."""
        return self._function(("scenario_head", s), lambda x: self._prob(self._fixed(x, s)),
                              [id_signature(self.schema, self.lookups, with_scenario=False)], scenario=s)

    # ------------------------------------------------------------------ concrete functions
    def routed(self):
        """Features incl. the scenario -> own-scenario ``prob`` (serving_default of ``all``)."""
        head = self._routed_head()
        return self._function("routed", lambda x: head(self._routed(x)), [self.inputs()])

    def all_scenarios(self):
        """Features incl. the scenario -> ``prob`` (own scenario) and ``probs`` [None, S] (every scenario): one
        pass of the model (``prob`` is the own scenario's column of ``probs``)."""
        def fn(x):
            prob, probs = self.model.routed_and_scenario_probs(self._routed(x), training=False)
            return {"prob": _as_prob(prob), "probs": tf.cast(probs, tf.float32)}
        return self._function("all_scenarios", fn, [self.inputs()])

    def scoring(self):
        """Features incl. the scenario -> ``prob`` (``serving_default``'s head) and ``oov`` ``[B, T]`` (per row,
        the ids of each of the ``T`` :func:`~tfmsr.features.lookup.oov_features` outside their vocabulary,
        from this graph's own lookups): ``tfmsr score``'s function, saved beside ``all``'s signatures (not a
        signature: TF Serving does not list it)."""
        head = self._routed_head()

        def fn(x):
            ids = self._routed(x)
            return {**head(ids), "oov": oov_per_row(self.schema, ids)}
        return self._function("scoring", fn, [self.inputs()])

    def scenario(self, s: int):
        """Features without the scenario -> ``prob`` in scenario ``s``."""
        head = self._scenario_head(s)
        return self._function(("scenario", s), lambda x: head(self._named(x)),
                              [self.inputs(with_scenario=False)])

    def routed_examples(self):
        head = self._routed_head()
        parse = examples_parser(self.schema, self.lookups, self.rates)
        return self._function("routed_examples", lambda examples: head(self._routed(parse(examples), True)),
                              [EXAMPLES_SPEC])

    def scenario_examples(self, s: int):
        head = self._scenario_head(s)
        parse = examples_parser(self.schema, self.lookups, self.rates, with_scenario=False)
        return self._function(("scenario_examples", s), lambda examples: head(parse(examples)), [EXAMPLES_SPEC])

    # ------------------------------------------------------------------ signature maps
    def signatures(self, scenario=None) -> Dict[str, object]:
        """Signature name -> concrete function of the ``all`` servable (``scenario=None``) or of the
        servable of scenario index ``scenario`` (``all``: the named per-scenario signatures up to
        ``NAMED_SIGNATURES_MAX`` scenarios, see the module docstring)."""
        if scenario is None:
            sigs = {"serving_default": self.routed(), "examples": self.routed_examples(),
                    "all_scenarios": self.all_scenarios()}
            if self.S <= NAMED_SIGNATURES_MAX:
                sigs.update({name: self.scenario(s) for s, name in enumerate(self.names)})
            return sigs
        sigs = {"serving_default": self.scenario(scenario), "examples": self.scenario_examples(scenario)}
        if self.S > NAMED_SIGNATURES_MAX:   # not reused by ``all``: graphs not kept (their row slices are: the
            for kind in ("scenario", "scenario_examples", "scenario_head"):   # functions hold them weakly)
                self._cache.pop((kind, scenario))
        return sigs


def sample_batch(schema: Schema, n: int = 4, seed: int = 0, with_scenario: bool = True,
                 raw: bool = False) -> Dict[str, np.ndarray]:
    """A deterministic batch of valid inputs: ids (building the model's variables), or with ``raw`` what a
    servable takes (warm-up requests): tables with a vocabulary get raw values from their file."""
    rng = np.random.default_rng(seed)
    out = {}
    if with_scenario:
        out[schema.scenario.name] = (np.arange(n) % schema.num_scenarios).astype(np.int64)
    for f in schema.features:
        owner = schema.table_owner(f)
        if f.kind == "numeric":
            out[f.name] = (f.mean + f.std * rng.standard_normal(n)).astype(np.float32)
            continue
        shape = (n, f.length) if f.kind == "sequence" else (n,)
        if owner.hashed:
            vals = np.array([f"v{v}".encode() for v in rng.integers(0, 1000, size=int(np.prod(shape)))],
                            dtype=object).reshape(shape)
        else:
            vals = rng.integers(1, owner.vocab_size, size=shape).astype(np.int64)
            if raw and owner.vocab:  # the raw values of those ids (of the first 1024 lines: big files stay unread)
                values = read_vocabulary(schema.vocab_path(f), owner.raw, limit=1024)
                vals = values[(vals - 1) % len(values)]
        if f.kind == "sequence":  # random lengths 0..L, right-padded
            lengths = rng.integers(0, f.length + 1, size=n)
            vals[np.arange(f.length)[None, :] >= lengths[:, None]] = b"" if vals.dtype == object else 0
        out[f.name] = vals
    return out


def to_examples(batch: Dict[str, np.ndarray], schema: Schema) -> List[bytes]:
    """Serialized ``tf.train.Example`` s of a raw input batch (padding left out of sequences)."""
    n = len(next(iter(batch.values())))
    records = []
    for i in range(n):
        feats = {}
        for name, col in batch.items():
            vals = col[i] if col.ndim == 2 else col[i:i + 1]
            if col.ndim == 2:  # drop the padding
                vals = vals[vals != (b"" if col.dtype == object else 0)]
            if col.dtype == np.float32:
                feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=vals))
            elif col.dtype == object:
                feats[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=list(vals)))
            else:
                feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=vals))
        records.append(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    return records
