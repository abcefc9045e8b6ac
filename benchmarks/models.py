"""The shopping-cart command as a dataclasses-avroschema model: the baseline of the Avro benchmark.

(No ``from __future__ import annotations`` here: dataclasses-avroschema needs real annotations.)
"""

import uuid
from dataclasses import dataclass
from typing import Optional

from dataclasses_avroschema import AvroModel, types


@dataclass
class ShoppingCartCmd(AvroModel):
    action: str
    cart_id: uuid.UUID
    owner_or_item: uuid.UUID
    count: Optional[types.Int32] = None

    class Meta:
        namespace = "rxcqrs.examples.shoppingcart"
