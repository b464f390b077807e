"""`python -m partitiond` runs the same CLI as the console script."""

from partitiond.cli import main

main()
