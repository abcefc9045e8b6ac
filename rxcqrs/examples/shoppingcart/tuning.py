"""How the example's consumer is tuned for throughput (the CLI's defaults, and what ``make bench`` runs).

Measured with ``make bench`` on 2 cores with Kafka and Cassandra on the same machine (README, Throughput).
"""

from __future__ import annotations

__all__ = ["WINDOW", "PREFETCH", "BATCHES", "CART_WRITES", "CONDITIONAL_CART_WRITES", "MAX_POLL_RECORDS",
           "GC_THRESHOLD"]

#: records in flight at most (the source's window): room for many commands of each cart to wait together,
#: so that batched mode folds them into one write (measured: 5,000 -> 10,000 took 0.7x -> 0.8x of the hand
#: cart-batched loop; see ``make bench``)
WINDOW = 10_000
#: poll again while earlier records are still being written (within the window): without it every window
#: waits for its slowest cart, and Cassandra idles between windows
PREFETCH = True
#: the source emits a partition's polled records as one batch, taken whole by the decoder and the engine (one
#: commit-gate entry and one ticket per batch: the poll thread's CPU per record 28-33 -> 12-20 µs, measured
#: with ``make bench``'s cart section, 200 carts)
BATCHES = True
#: carts written at once in batched mode: concurrent writes share the commit log's syncs, while the carts
#: waiting their turn gather commands for their next write (200 at once: 1.7x as many writes, each smaller, and
#: slower overall)
CART_WRITES = 64
#: carts written at once in batched mode with the conditional protocol: a Paxos write waits four round trips,
#: so more of them in flight (measured on 2,000 carts, 100,000 commands: 64 -> 256 took 2,800 -> 3,300-3,600
#: commands/s; 1,024: 2,400-2,600; on 20,000 carts 512 made 800 -> 900/s; on 200 carts no change)
CONDITIONAL_CART_WRITES = 256
#: records one consumer poll returns at most
MAX_POLL_RECORDS = 2000
#: the cyclic GC's young-generation threshold ``cart consume`` sets for its process (:mod:`rxcqrs.gc_tuning`):
#: at Python's 700 every record of the window is promoted and traversed by full collections (7-11 µs per command
#: on 200 carts); at 20,000 they die young (measured in the README, "Throughput"; ``make bench`` runs every
#: contender, the hand-written loops included, with it)
GC_THRESHOLD = 20_000
