"""The account example: a balances HTTP service and a flow that asks it three questions in parallel."""
