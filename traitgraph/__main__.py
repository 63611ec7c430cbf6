import sys

from traitgraph.cli import main

sys.exit(main())
