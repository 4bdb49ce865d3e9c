"""``python -m refimpl.cli``: the ``refimpl`` command."""

import sys

from .parser import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
