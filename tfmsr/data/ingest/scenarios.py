"""Scenario names and each value's scenario, once the whole log has been read.

* ``scenario.names``: the source is an index 0..S-1 (e.g. a ``bucketize``), mapped to those names.
* ``scenario.values`` (or the previous dataset's names under ``--vocab-from``): the listed values are the
  scenarios, in that order; any other value goes to ``other``, or is an error naming where it appears.
* otherwise the values seen are the scenarios, in sorted order; past ``max_scenarios`` the most frequent
  ``max_scenarios - 1`` keep their name and the rest go to ``other`` (without ``other``: an error naming the
  first row of the first value beyond the limit).

``other``, when configured, is always a scenario (possibly empty today), so a later day's new values have a
place and the scenario list stays the same.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from tfmsr.data.ingest.spec import ScenarioSpec
from tfmsr.data.ingest.vocab import Coder
from tfmsr.data.pipeline import DataError


def resolve(sc: ScenarioSpec, coder: Coder, counts: np.ndarray, previous: Optional[List[str]],
            files: List[str]) -> Tuple[List[str], np.ndarray]:
    """(scenario names, code -> scenario index) of a coded scenario source."""
    values = [str(v) for v in coder.values().tolist()]
    counts = np.concatenate([counts, np.zeros(max(0, len(values) - len(counts)), np.int64)])[:len(values)]
    listed = sc.values or (previous and [v for v in previous if v != sc.other])
    if listed:
        names = list(listed)
        known = set(names)
        unknown = [c for c, v in enumerate(values) if v not in known]
        if unknown and not sc.other:
            c = unknown[0]
            raise DataError(f"{coder.where(c, files)}: column '{sc.source}' value {values[c]!r} is not a listed "
                            f"scenario ({', '.join(names)}); add it or set scenario.other")
    else:
        order = np.argsort(coder.values(), kind="stable")
        names = [values[c] for c in order]
        if sc.max_scenarios and len(names) > sc.max_scenarios:
            if not sc.other:
                c = sc.max_scenarios  # codes follow first appearance: the first value beyond the limit
                raise DataError(f"{coder.where(c, files)}: column '{sc.source}' value {values[c]!r} is scenario "
                                f"value number {c + 1}, more than max_scenarios {sc.max_scenarios} allows; set "
                                "scenario.other (a bucket for the rest) or raise max_scenarios")
            top = set(np.argsort(-counts, kind="stable")[:sc.max_scenarios - 1].tolist())
            names = [values[c] for c in order if c in top]
    if sc.other and sc.other not in names:
        names.append(sc.other)
    index = {v: i for i, v in enumerate(names)}
    other = index.get(sc.other, -1)
    return names, np.array([index.get(v, other) for v in values], np.int64)
