"""The bottom layer: errors, registry, config reading, run directories, atomic writes, progress, metrics.

Imports nothing else of tfmsr (the layering is checked by ``tests/core/test_layering.py``)."""
