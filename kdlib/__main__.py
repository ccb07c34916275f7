"""``python -m kdlib``: see :mod:`kdlib.cli`."""

from kdlib.cli import main

raise SystemExit(main())
