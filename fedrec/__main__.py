"""``python -m fedrec``: the same as the ``fedrec`` command."""

from fedrec.cli import main

main()
