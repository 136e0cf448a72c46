"""A small bounded cache of tables computed from a request's shape (RoPE tables of every DiT family).

Named state of a model (DESIGN principle 8): `get(key, build)` returns the table for `key`, building
it with `build()` the first time; at most `max_entries` tables are kept (a few shapes per run at
most: when full it is emptied); a lock guards the writes, so two threads sharing a model never see
a half-built table; `reset()` empties it (e.g. after moving the model to another device).
"""

from __future__ import annotations

import threading
from typing import Callable, Hashable

from torch import Tensor


class TableCache:
    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._tables: dict[Hashable, Tensor] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], Tensor]) -> Tensor:
        table = self._tables.get(key)
        if table is None:
            table = build()
            with self._lock:
                if len(self._tables) >= self.max_entries:
                    self._tables.clear()
                self._tables[key] = table
        return table

    def reset(self) -> None:
        with self._lock:
            self._tables.clear()

    def __len__(self) -> int:
        return len(self._tables)
