"""Ranking models, one file per model, registered by name (``tfmsr models`` lists them)."""
from tfmsr.models import dnn  # noqa: F401  (registration)
from tfmsr.models import bst, dcnv2, deepfm, din, hinet, mmoe, pepnet, ple, sarnet, star, wdl  # noqa: F401
from tfmsr.models import musenet  # noqa: F401
from tfmsr.models import saml  # noqa: F401
from tfmsr.models import sainet  # noqa: F401
from tfmsr.models import fimn  # noqa: F401
from tfmsr.models.base import ConfigError, RankingModel, available, build, gather_scenario, get_class, register

__all__ = ["ConfigError", "RankingModel", "available", "build", "gather_scenario", "get_class", "register"]
