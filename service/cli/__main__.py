"""`python -m service.cli` is the same as the `cgd` console script."""

import sys

from service.cli import main

sys.exit(main())
