"""`python -m composeloop`: see `composeloop.cli`."""

from composeloop.cli import main

if __name__ == "__main__":
    main()
