"""Retrieval models (``tfmsr retrieval models`` lists them); each module registers itself when
the registry first loads them (``tfmsr.retrieval.models.base``)."""
from tfmsr.retrieval.models.base import RetrievalModel, available, build, get_class, register

__all__ = ["RetrievalModel", "available", "build", "get_class", "register"]
