"""Multi-scenario candidate retrieval: SASS (two-stage: contrastive pre-training, pairwise fine-tuning)
and the two-tower baselines DSSM and YoutubeDNN, with top-K evaluation per scenario.

Retrieval models have their own registry (``tfmsr.retrieval.base``), apart from the ranking models of
``tfmsr.models``. Modules: ``data`` (samples from any tfmsr dataset), ``pairs`` (cross-scenario pairs for
pre-training), ``sass`` / ``dssm`` / ``youtubednn`` (models), ``trainer`` (stages), ``evaluation`` (HR@K,
NDCG@K over each scenario's corpus), ``config``, ``export`` (user / item / top-K SavedModels per
scenario, written by ``tfmsr export``).
"""
from tfmsr.retrieval.base import RetrievalModel, available, build, get_class, register

__all__ = ["RetrievalModel", "available", "build", "get_class", "register"]
