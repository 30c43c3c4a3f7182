"""`python3 -m scorefpe.cli`: the `scorefpe` command."""

from scorefpe.cli.main import main

if __name__ == "__main__":
    main(prog_name="scorefpe")
