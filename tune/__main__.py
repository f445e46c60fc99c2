"""`python -m mmtune.tune` is `mmtune`."""
from mmtune.tune.cli import main

main()
