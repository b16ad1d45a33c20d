"""``python -m local.emulator``: see ``local.emulator.server``."""

import sys

from local.emulator.server import main

sys.exit(main())
