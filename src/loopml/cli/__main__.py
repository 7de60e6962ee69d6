"""``python -m loopml.cli``."""

import sys

from loopml.cli import main

sys.exit(main())
