import sys

from aicommons.cli import main

sys.exit(main())
