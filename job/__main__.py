"""`python -m job VERB …`: see job/cli/main.py."""

import sys

from job.cli.main import main

sys.exit(main())
