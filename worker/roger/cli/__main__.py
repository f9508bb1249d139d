"""``python -m roger.cli``: the ``roger`` command."""

import sys

from roger.cli import main

sys.exit(main())
