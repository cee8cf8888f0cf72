import sys

if __name__ == "__main__":  # (spawned workers import it as __mp_main__: nothing to run there)
    from .cli import main

    sys.exit(main())
