"""``python -m tfmsr.cli``: the ``tfmsr`` console script (the cluster launcher starts roles this way)."""
import sys

from tfmsr.cli import main

sys.exit(main())
