import sys

from optishear.cli import main

sys.exit(main())
