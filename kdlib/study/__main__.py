"""``python -m kdlib.study``: see :mod:`kdlib.study.cli`."""

from kdlib.study.cli import main

raise SystemExit(main())
