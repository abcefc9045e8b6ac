"""Examples built on rxcqrs: the shopping cart (dendrites' CQRS example, its bugs fixed) and the demo job."""
