"""The shopping-cart CQRS example (dendrites' example, with its bugs fixed): see ``python -m
rxcqrs.examples.shoppingcart --help`` and :mod:`rxcqrs.examples.shoppingcart.pipeline`."""
