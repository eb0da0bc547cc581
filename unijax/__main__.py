"""``python -m unijax``: the same as the ``unijax`` command (see :mod:`unijax.cli`)."""

import sys

from unijax.cli import main

if __name__ == "__main__":
    sys.exit(main())
