"""``python -m ich_client`` runs the ``ich`` command line (handy where the script folder is not on PATH)."""

import sys

from ich_client.cli import main

sys.exit(main())
