"""`python -m spa.cli`: the same as the `spa` command."""
import sys

from . import main

sys.exit(main())
