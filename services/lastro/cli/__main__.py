import sys

from lastro.cli import main

sys.exit(main())
