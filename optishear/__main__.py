"""`python -m optishear`: the `optishear` command."""

import sys

from optishear.cli import main

sys.exit(main())
