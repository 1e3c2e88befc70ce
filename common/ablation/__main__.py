"""``python -m common.ablation`` = the ``ablate`` command."""

import sys

from common.ablation.cli import main

sys.exit(main())
