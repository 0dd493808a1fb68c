"""Keras layers: shared building blocks and one layer per paper module (docstrings cite the equations).

Call convention (every layer here and the model-level blocks): ``call(self, <data tensors>, <scenario index>,
mask=None, training=False, <flags>)``. Each tensor is its own positional argument, the data first (required, then
optional ones), the scenario ids ``[B]`` last among them; ``mask``, ``training`` and flags are passed by keyword.
No list of inputs and no second call form; a layer whose weights depend on more than its first tensor derives
:class:`~tfmsr.layers._inputs.MultiInputLayer` (Keras 2 builds from the first argument only).
"""
from tfmsr.layers.embedding import FeatureEmbedding, masked_mean
from tfmsr.layers.mlp import MLP, initializer
from tfmsr.layers.scenario import ScenarioDense, ScenarioMLP, StackedInit, all_matmul, own_matmul, own_rows
from tfmsr.layers.towers import ScenarioTowers
from tfmsr.layers.attention import (MultiHeadSelfAttention, MultiHeadTargetAttention, PositionalEmbedding,
                                    TargetAttention, TransformerBlock, masked_softmax)
from tfmsr.layers.behavior import (Behavior, behavior_pairs, behavior_scenario, behavior_scenario_embedding,
                                   context_inputs, embed_behavior, pooled_sequences, require_behavior)
from tfmsr.layers.experts import CGC, ExpertBank, ExpertGates, ScenarioExtraction, ScenarioMoE
from tfmsr.layers.gates import EPNet, GateNU, PPNet
from tfmsr.layers.interaction import CrossNetV2, FMInteraction, WideLinear, fm_second_order
from tfmsr.layers.partitioned import PartitionedNormalization, ScenarioAffine, StarDense, partition_apply

__all__ = ["FeatureEmbedding", "masked_mean", "MLP", "initializer", "ScenarioTowers", "ScenarioDense", "ScenarioMLP", "StackedInit",
           "all_matmul", "own_matmul", "own_rows",
           # baselines' shared layers
           "MultiHeadSelfAttention", "MultiHeadTargetAttention", "PositionalEmbedding", "TargetAttention",
           "TransformerBlock", "masked_softmax", "Behavior", "behavior_pairs", "behavior_scenario",
           "behavior_scenario_embedding", "context_inputs", "embed_behavior", "pooled_sequences",
           "require_behavior", "CGC", "ExpertBank", "ExpertGates", "ScenarioExtraction", "ScenarioMoE", "EPNet",
           "GateNU", "PPNet", "CrossNetV2", "FMInteraction", "WideLinear", "fm_second_order",
           "PartitionedNormalization", "ScenarioAffine", "StarDense", "partition_apply"]
