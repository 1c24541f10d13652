"""`python -m job VERB …`: see job/cli.py."""

import sys

from job.cli import main

sys.exit(main())
