"""``python -m shared.devstack``: what ``just up`` runs."""

import sys

from shared.devstack.supervisor import main

sys.exit(main())
