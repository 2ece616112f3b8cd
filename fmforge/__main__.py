import sys

from fmforge.cli import main

sys.exit(main())
