"""tfmsr: one model, many scenarios. TensorFlow/Keras trainer for multi-scenario recommendation.

Importing tfmsr pins Keras 2 (tf_keras) for TensorFlow: ``TF_USE_LEGACY_KERAS=1`` must be in the
environment before TensorFlow is imported (see DESIGN section 1: Keras 3 has no ParameterServerStrategy
in ``model.fit``). Import tfmsr before TensorFlow, or export the variable yourself.
"""
import os
import sys

__version__ = "0.1.0"

_legacy = os.environ.get("TF_USE_LEGACY_KERAS")
if "tensorflow" in sys.modules and _legacy not in ("1", "true", "True"):
    raise ImportError(
        "tfmsr: TensorFlow was imported before tfmsr without TF_USE_LEGACY_KERAS=1, so tf.keras may be "
        "Keras 3. Import tfmsr before tensorflow, or run with TF_USE_LEGACY_KERAS=1 in the environment."
    )
if _legacy is not None and _legacy not in ("1", "true", "True"):
    raise ImportError(
        f"tfmsr: TF_USE_LEGACY_KERAS={_legacy!r} in the environment; tfmsr needs Keras 2 (tf_keras). "
        "Unset it or set it to 1."
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
