"""``python -m samlocal.emulator``: see ``samlocal.emulator.server``."""

import sys

from samlocal.emulator.server import main

sys.exit(main())
