"""The ``simclr`` command line: the top layer, the one place that imports training, index and service."""
