"""`python -m tune` is `mmtune`."""
from tune.cli import main

main()
