"""``python -m cramming.export model=outputs/RUN/model out=DIR``: a folder for transformers (remote.py)."""

import sys

from cramming.export.remote import main

sys.exit(main())
