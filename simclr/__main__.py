"""``python -m simclr`` (and ``torchrun -m simclr pretrain ...``): the ``simclr`` command."""

from simclr.cli import main

if __name__ == "__main__":
    main()
