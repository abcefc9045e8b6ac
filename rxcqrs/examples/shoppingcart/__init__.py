"""The shopping-cart CQRS example: see ``python -m
rxcqrs.examples.shoppingcart --help`` and :mod:`rxcqrs.examples.shoppingcart.pipeline`."""
