"""``python -m tests.benchmarks [names...]``: run every benchmark (or the named ones)."""

from tests.benchmarks.run import main

raise SystemExit(main())
