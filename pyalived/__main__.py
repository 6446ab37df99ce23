"""Allow ``python -m pyalived``."""

from pyalived.cli import main

raise SystemExit(main())
