"""Hypothesis strategies for small interaction logs (ties in time included)."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import strategies as st

from rmdiag.data import Interactions, load


@st.composite
def logs(
    draw: st.DrawFn, max_rows: int = 40, max_users: int = 6, max_items: int = 8
) -> Interactions:
    n = draw(st.integers(1, max_rows))
    users = draw(st.lists(st.integers(1, max_users), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(1, max_items), min_size=n, max_size=n))
    times = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))  # few values: many ties
    rewards = draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
    return load(
        pa.table(
            {
                "user_id": users,
                "item_id": items,
                "timestamp": times,
                "reward": [float(r) for r in rewards],
            }
        )
    )
