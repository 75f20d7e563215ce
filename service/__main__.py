"""``python -m service --home DIR --host H --port P --workers N``: the service without the ``simclr`` CLI."""

import argparse

from service.serve import add_arguments, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m service", description="Serve the published SimCLR model over HTTP.")
    add_arguments(parser)
    main(parser.parse_args())
