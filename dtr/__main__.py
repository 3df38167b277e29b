"""`python -m dtr`: the same entry point as the `dtr` console script."""

from dtr.cli import main

if __name__ == "__main__":
    main()
