"""The README's example runs as written (with unique names, so reruns do not see each other's data)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path


def test_the_readme_example_runs(kafka_bootstrap, cassandra_session, capsys) -> None:  # type: ignore[no-untyped-def]
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    code = re.search(r"## Composing a flow.*?```python\n(.*?)```", readme, re.S).group(1)  # type: ignore[union-attr]
    tag = uuid.uuid4().hex[:8]
    code = (code.replace('"deposits"', f'"deposits_{tag}"').replace('"bank"', f'"bank_{tag}"')
            .replace("bank.ledger", f"bank_{tag}.ledger"))
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec", dont_inherit=True), namespace)  # (no __future__ annotations)
    out = capsys.readouterr().out
    assert "4950 deposited" in out
    rows = cassandra_session.execute(f"SELECT count(*) FROM bank_{tag}.ledger").one()[0]
    assert rows == 100
    cassandra_session.execute(f"DROP KEYSPACE bank_{tag}")
