"""`python -m benchmark.cli ...` = `benchmark ...`."""
import sys

from benchmark.cli import main

sys.exit(main())
