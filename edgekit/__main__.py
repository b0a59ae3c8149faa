"""`python -m edgekit`: the same command as `edgekit`."""

from edgekit.cli import main

if __name__ == "__main__":
    main(prog_name="edgekit")
