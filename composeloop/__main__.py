"""`python -m composeloop`: see `composeloop.app.cli`."""

from composeloop.app.cli import main

if __name__ == "__main__":
    main()
