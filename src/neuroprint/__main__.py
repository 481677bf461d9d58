"""`python -m neuroprint`: the command line."""
from neuroprint.cli import main

main()
