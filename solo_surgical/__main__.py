"""``python -m solo_surgical ...`` is the ``solo-surgical`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
