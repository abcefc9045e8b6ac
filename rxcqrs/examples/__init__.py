"""Examples built on rxcqrs: the shopping cart and the demo job."""
