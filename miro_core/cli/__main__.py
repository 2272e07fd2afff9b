"""``python -m miro_core.cli`` (and ``torchrun -m miro_core.cli``) = the ``miro`` command."""

from . import main

raise SystemExit(main())
