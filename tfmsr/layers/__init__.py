"""Keras layers: shared building blocks and one layer per paper module (docstrings cite the equations)."""
from tfmsr.layers.embedding import FeatureEmbedding, masked_mean
from tfmsr.layers.mlp import MLP, initializer
from tfmsr.layers.towers import ScenarioTowers

__all__ = ["FeatureEmbedding", "masked_mean", "MLP", "initializer", "ScenarioTowers"]
