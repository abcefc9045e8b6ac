import sys

from rxcqrs.examples.shoppingcart.cli import main

sys.exit(main())
