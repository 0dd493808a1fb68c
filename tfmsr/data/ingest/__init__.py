"""``tfmsr data ingest --spec SPEC.yaml --out DIR [--overwrite] [--vocab-from PREV] [--root DIR] [--layout L]``.

Your own logs in, raw ids out: a YAML spec says how the rows of your files (CSV/TSV, Parquet, JSON lines;
one file, several or a glob; plain or ``.gz``; any path ``tf.io.gfile`` reads) become a dataset in the
layout every tfmsr command reads (``schema.yaml``, ``stats.json``, ``train|valid|test/part-*.tfrecord``)
plus ``vocab/<table>.txt``. Shards hold **raw values** (strings, int64) of vocabulary tables; the parser
and the exported graphs map them to ids with those files. Shipped specs: ``tfmsr/configs/data/``
(``movielens_100k`` reproduces ``tfmsr data convert movielens``). Python: ``ingest(spec, out, ...)``.

Spec keys (an unknown key anywhere is an error naming it; relative paths start at ``root``)::

    root: DIR                  # folder of relative input paths (default: the spec's folder; relative to
                               # the current folder; --root overrides it)
    inputs:                    # the event log, one row = one example (a list, or one mapping)
      - path: logs/*.csv.gz    # a file, a glob or a list of them
        format: csv            # csv | tsv | parquet | jsonl (default: from the extension)
        sep: ","               # one character (csv: ",", tsv: tab)
        header: true           # false: give `names`, the columns in order
        names: [a, b, c]
        columns: {user: string, item: int64, price: float64}   # the columns read and their types;
                               # other columns are ignored; all inputs give the same columns
        encoding: utf-8        # csv/tsv text encoding (e.g. latin-1)
        quote: '"'             # or none
        null_values: ["", "NULL", "null", "NaN", "nan", "\\N"]  # cells that are missing
        constants: {page: home}  # a value per file (e.g. one file = one scenario)
    tables:                    # side tables, read whole, joined to every row on a key
      items:
        path: items.csv        # + the reader keys above
        columns: {item: int64, brand: string}
        key: item              # the table's key column (unique)
        on: item               # the log value holding the key (default: same name as key)
        required: false        # true: rows without a match are dropped (counted), else get missing values
    derive:                    # new values, in order; each names one operation
      item_key: {concat: [domain, item], sep: ":"}        # strings/ints joined
      genre: {first_token: genres, sep: "|"}               # "A|B|C" -> "A"
      zip3: {slice: zip, start: 0, stop: 3, strip: true, case: upper}
      genre2: {first_flag: [g0, g1], values: [Action, Comedy], default: unknown}  # first 0/1 column set
      age_group: {bucketize: age, boundaries: [25, 35]}    # index 0..len(boundaries) (value >= b: past b)
      year: {time_part: ts, part: year, unit: s}           # year|month|day|weekday|hour of unix times (UTC)
      n_events: {count_per: user}                          # per key: the key's number of kept rows (all files)
      position: {position_in_file: user}                   # per key: (rank + 0.5) / count among the key's
                                                            # rows of the same file (a time without timestamps)
      item_rate: {rate_per: item, m: 10, reading: out_of_fold, folds: 5}  # the key's train positive rate
      item_seen: {train_count_per: item}                   # the key's train rows rate reads (rates.py)
    filter: ["price > 0", "country in [\\"DE\\", \\"FR\\"]"]   # rows failing a rule are dropped, counted per rule
    label: {name: label, rule: "rating >= 4"}   # or {name: click, from: click} (a 0/1 column)
    scenario:                  # the scenario field (absent: one scenario "all")
      name: scenario
      from: page               # a string/int value: its values are the scenario names, in sorted order ...
      values: [home, search]   # ... or in this order; other values go to `other` (else an error)
      max_scenarios: 5         # at most this many (with `other`: the 4 most frequent + other)
      other: other             # the bucket for the rest (always present when set)
      names: [light, heavy]    # instead of values: `from` is an index 0..S-1 (e.g. a bucketize) -> names
    user: user_id              # the feature naming the user (GAUC's key; behaviour and user_time split)
    time: ts                   # a numeric value ordering the events (ties by input order; absent: input order)
    features:                  # name -> what the model reads; group: user|item|context|query|behavior
      user_id: {from: user, group: user, min_count: 1, max_size: 1000000, dim: 16}   # vocab from train counts
      query: {from: q, group: query, hash_buckets: 100000}   # raw strings, hashed in the graph
      clicked_item: {from: clk, group: item, table: item_id}  # shares item_id's vocabulary
      age_band: {from: age, group: user, boundaries: [18, 25, 35]}   # ids = bucket + 1 (0 missing)
      slot: {from: slot, group: context, ids: 10}            # values already ids 1..9 (0 missing)
      price: {from: price, group: item, transform: [log1p, {clip: [0, 10]}, standardize], fill: 0.0}
      tags: {kind: sequence, from: tags, sep: "|", length: 5, group: item, order: newest_first}
    behaviour:                 # sequences built from the log: the user's earlier events
      length: 30
      where: "rating >= 4"     # which events count as behaviour (default: all)
      features: {hist_item_id: item_id, hist_genre: genre, hist_scenario: scenario}
    split:                     # default {by: user_time, valid: 0.1, test: 0.1}
      by: user_time            # per user by time: last floor(n*test) test, floor(n*valid) before valid,
                               # >= 1 train row per user (the datasets/README.md protocol)
      # by: global_time, valid_from: T, test_from: T     (in the time value's unit)
      # by: hash, key: user, valid: 0.1, test: 0.1, seed: 0   (hash of the key's raw value)
      # by: column, from: part, values: {train: [fit], valid: [val], test: [eval]}
    extras: {rating: int64, day: {from: ts, dtype: int64}}   # carried through, never model inputs
    dim: 16                    # default embedding dim
    output: {rows_per_shard: 100000, gzip: false, chunk_mb: 16, group_rows: 200000, layout: features}
                               # layout: the shards' record layout, features | packed (tfmsr/data/layout.py);
                               # --layout overrides it

Semantics worth knowing:

* **Ids.** A vocabulary table keeps the values seen at least ``min_count`` times in the **train** split,
  most frequent first (ties by value), at most ``max_size``; ``vocab/<table>.txt`` line n is the raw value
  of id n; ``vocab_size`` = lines + 1 (id 0 = missing / out of vocabulary). Missing is ``""`` for strings
  and ``0`` for int64 tables (a raw 0 is read as missing). Features sharing a table (``table:``) and
  delimited sequences add their train counts to the owner's; sequences built from the log do not (they
  repeat the targets' values).
* **--vocab-from PREV** keeps every value of PREV's vocabularies at its id, appends new values meeting
  ``min_count`` on this dataset's train counts, never renumbers; more than ``max_size`` values is an error
  naming the table. PREV's scenario names are kept too. ``stats.json["ingest"]["tables"]`` reports per
  table and split the occurrences of known (PREV's), new (appended) and OOV values.
* **Behaviour** (``behaviour``): each row's history is its user's events **strictly before** the row's
  time, most recent first (ties by input order), at most ``length``; rows of every split are events, so a
  test row sees the user's train and valid events. ``hist_scenario`` stores each behaviour's scenario + 1.
* **Per-key values** (``count_per``, ``position_in_file`` and bucketisations of them) are known only after
  the whole log is read: usable by features, the scenario, the time and extras, not by rules.
* **Label rates** (``rate_per``, ``train_count_per``; ``rates.py``): the key's train-split rows and
  positives, smoothed ``(pos + m p) / (n + m)`` toward the global train rate p of the same rows.
  ``reading: out_of_fold`` (default; needs ``user``; ``folds: 5``): train rows read the other folds of a
  hash of the user, valid/test rows every train row (the ``popularity`` row's information); keys x folds
  counts. ``reading: as_of`` (needs ``time``): train rows **strictly earlier** than the row (ties
  excluded), what a server knows at request time; ~32 bytes per train row. Never leave-one-out.
  ``stats.json["ingest"]["rates"]`` counts per split the rows with no train row of their key (prior
  only). ``--vocab-from`` carries the previous dataset's counts (``rates/<key>.parquet``).
* **Record layout** (``output.layout`` or ``--layout``): ``features`` (default) writes one Example feature
  per column (any tf.Example tool reads it; a valid serving request); ``packed`` a row's scalar columns in
  one list per dtype: fewer keys per row, so smaller and faster to parse (the less so the more of a row its
  behaviour sequences are, which stay one feature each); every tfmsr reader (training, scoring, export,
  ``--vocab-from``, ``data subset``) reads both. Both are written by the same vectorised encoder (``encode``).
* **Nothing is dropped silently**: ``stats.json["ingest"]`` holds rows read per file, rows dropped by each
  rule (filters, missing label / user / time / scenario / split values, required joins), join misses,
  missing cells per value, and per table the vocabulary size, new / below-min-count / truncated values.
* **Errors** name the file, the line (or row), the column and what was expected: a missing column, a value
  that does not parse, an empty file, a wrong separator, a label rule matching no row, too many scenario
  values without ``other``, an unknown spec key. No output and no temp folder is left behind.
* **Atomic and bounded**: everything is written to ``OUT.tmp-<pid>`` and renamed; folders of a killed run
  are removed by the next one (``run.py``). Memory is bounded by the distinct values and one group of
  rows (``output.group_rows``; all of a user's rows are in one group), not by the number of rows.

Converters as presets: ``tfmsr data convert movielens`` is reproduced by ``configs/data/movielens_100k.yaml``
(same rows per split and scenario, positives and histories; ids differ: raw values with vocab files instead
of ranks of sorted values; the spec adds the item_rate / item_train_n features and item_id min_count 5),
so it can become a thin preset over that spec (without those three keys). The *preprocessed* layouts of
Ali-CCP and KuaiRand are plain CSVs too (field 301 / ``tab`` -> scenario, a per-file constant -> ``split:
{by: column}`` for Ali-CCP) and map onto specs, up to their fixed id remapping and KuaiRand's split drawn
per row number rather than per key. Two layouts stay code. Alimama's four tables: its behaviour sequences
come from a *second* event stream (behavior_log, 700M rows with a ``btag`` per event) merged with the
impressions by user and time, while a spec builds behaviour from its one log. Ali-CCP's raw release: a
skeleton row's features are a ``\x01``-joined list of ``field\x02id\x03value`` entries, and its user
fields sit in a separate common-features file reached through ``common_feature_index``; decoding that
nested key-value layout (last entry of a field wins, ids and dense values from one entry) is parsing
specific to the dataset, not a column of a table.
"""
from tfmsr.data.ingest.run import add_ingest_arguments, ingest, run_cli
from tfmsr.data.ingest.spec import SpecError, load_spec

__all__ = ["ingest", "add_ingest_arguments", "run_cli", "load_spec", "SpecError"]
