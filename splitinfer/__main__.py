"""`python -m splitinfer ...` is the `splitinfer` command (scripts start servers with it:
`python -m splitinfer serve ...`, whichever Python runs them)."""

import sys

from splitinfer.cli import main

sys.exit(main())
