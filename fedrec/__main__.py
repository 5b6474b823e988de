"""``python -m fedrec``: the same as the ``fedrec`` command."""

from fedrec.cli import main

if __name__ == "__main__":  # importing the module (as tests/test_design.py does) must not run the CLI
    main()
