"""Ranking models, one file per model, registered by name (``tfmsr models`` lists them)."""
from tfmsr.ranking.models import dnn  # noqa: F401  (registration)
from tfmsr.ranking.models import bst, dcnv2, deepfm, din, hinet, mmoe, pepnet, ple, sarnet, star, wdl  # noqa: F401
from tfmsr.ranking.models import musenet  # noqa: F401
from tfmsr.ranking.models import saml  # noqa: F401
from tfmsr.ranking.models import sainet  # noqa: F401
from tfmsr.ranking.models import fimn  # noqa: F401
from tfmsr.ranking.models.base import RankingModel, available, build, gather_scenario, get_class, register

__all__ = ["RankingModel", "available", "build", "gather_scenario", "get_class", "register"]
