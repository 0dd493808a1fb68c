"""Feature schema (fields, kinds, groups, scenarios, labels) as dataclasses <-> YAML."""
from tfmsr.features.schema import EXTRA_DTYPES, GROUPS, KINDS, Feature, Scenario, Schema, SchemaError

__all__ = ["Feature", "Scenario", "Schema", "SchemaError", "KINDS", "GROUPS", "EXTRA_DTYPES"]
