"""``python -m lastro.smoke``."""

import sys

from lastro.smoke import main

sys.exit(main())
