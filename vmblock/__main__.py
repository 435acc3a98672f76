"""``python -m vmblock``: the CLI without an installed console script."""

from vmblock.cli import main

main()
