"""``python -m devtools.traces``: what ``just traces`` and ``just trace`` run."""

import sys

from devtools.traces.view import main

sys.exit(main())
