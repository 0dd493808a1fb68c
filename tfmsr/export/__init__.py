"""SavedModel export for TF Serving: per-scenario servables, signatures, assets, warm-up requests."""
from tfmsr.export.saved_model import export, existing_versions, resolve_servable
from tfmsr.export.signatures import ServingFunctions, input_signature, sample_batch, servable_names, to_examples

__all__ = ["ServingFunctions", "existing_versions", "export", "input_signature", "resolve_servable",
           "sample_batch", "servable_names", "to_examples"]
