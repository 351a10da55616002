"""Secret values written as ``***``: in a run's log, a step's recorded detail, a run's reason, as GitHub
Actions masks them.

A Masker holds values (a pipeline's secrets, each line of a multi-line one too) and replaces every
occurrence of each, the longest first, so that a value that holds another is masked whole. Values shorter
than MIN_LENGTH are refused: they would mask every line they happen to stand in. ``PROCESS`` holds what
every run of this process masks as well: the GitHub token and the notification webhook URLs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

MASK = "***"
# A shorter value would mask common text ("a", "on", "1"): it is refused as a secret.
MIN_LENGTH = 4


def parts(value: str) -> list[str]:
    """What masking ``value`` replaces: the value, and each of its lines long enough to be masked alone
    (a program may print a multi-line secret line by line)."""
    found = [value] if len(value) >= MIN_LENGTH else []
    if "\n" in value:
        found.extend(line for line in value.splitlines() if len(line.strip()) >= MIN_LENGTH)
    return found


class Masker:
    """Values to mask, and ``parent``'s too: a run's masker holds its secrets over the process's."""

    def __init__(self, values: Iterable[str] = (), parent: Masker | None = None) -> None:
        self.parent = parent
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._ordered: tuple[str, ...] = ()
        self.add(*values)

    def add(self, *values: str) -> None:
        """Mask ``values`` from now on; each of fewer than MIN_LENGTH characters is ignored (refused
        earlier, where it was a secret)."""
        found = {part for value in values for part in parts(value)}
        with self._lock:
            if found - self._values:
                self._values |= found
                # Longest first: a value that holds a shorter one is replaced whole.
                self._ordered = tuple(sorted(self._values, key=len, reverse=True))

    def discard(self, value: str) -> None:
        """Mask ``value`` no more (a token that has expired)."""
        with self._lock:
            self._values -= set(parts(value))
            self._ordered = tuple(sorted(self._values, key=len, reverse=True))

    def values(self) -> tuple[str, ...]:
        own = self._ordered
        if self.parent is None:
            return own
        return tuple(sorted({*own, *self.parent.values()}, key=len, reverse=True))

    def mask(self, text: str) -> str:
        for value in self.values():
            if value in text:
                text = text.replace(value, MASK)
        return text

    def mask_bytes(self, data: bytes) -> bytes:
        """``data`` masked, as the bytes a program printed: a value matches as its UTF-8 encoding."""
        for value in self.values():
            encoded = value.encode()
            if encoded in data:
                data = data.replace(encoded, MASK.encode())
        return data


# What every run of this process masks besides its own secrets: the GitHub token runner holds, each
# installation token it made, and the webhook URLs notifications go to (runner/github_auth.py and
# runner/notify_send.py add them as they read them).
PROCESS = Masker()
