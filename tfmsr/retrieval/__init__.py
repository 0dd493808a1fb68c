"""Multi-scenario candidate retrieval: SASS (two-stage: contrastive pre-training, pairwise fine-tuning)
and the two-tower baselines DSSM and YoutubeDNN, with top-K evaluation per scenario.

The same shape as ``tfmsr.ranking``: ``models/`` (``base`` with its own registry, ``sass``, ``dssm``,
``youtubednn``), ``config``, ``data`` (samples from any tfmsr dataset), ``pairs`` (cross-scenario pairs for
pre-training), ``train`` (stages), ``evaluate`` (HR@K, NDCG@K over each scenario's corpus), ``export``
(user / item / top-K SavedModels per scenario, written by ``tfmsr export``).
"""
