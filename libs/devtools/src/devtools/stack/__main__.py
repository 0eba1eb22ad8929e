"""``python -m devtools.stack``: what ``just up`` runs."""

import sys

from devtools.stack.supervisor import main

sys.exit(main())
