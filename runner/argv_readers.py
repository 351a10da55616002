"""Which item of an argument list a program earlier in it reads as code: the tests of REPARSERS' entries.

Each test takes the list, the program's index ``k`` and the item's index ``j`` (``k < j``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence


def _is_long(item: str, options: tuple[str, ...], exact: tuple[str, ...] = ()) -> bool:
    """Whether an argument list's item is one of ``options``, or a prefix of one, with or without ``=``."""
    name = item.split("=", 1)[0]
    return (
        name.startswith("--")
        and len(name) > 2
        and name not in exact
        and any(o.startswith(name) for o in options)
    )


def always(argv: Sequence[str], k: int, j: int) -> bool:
    return True


def code_options(
    letters: str, long: tuple[str, ...] = (), takes: str = "", takes_long: tuple[str, ...] = ()
) -> Callable[[Sequence[str], int, int], bool]:
    """The program at k reads item j as code: a code option stands anywhere before j, or j is the script (only
    options before it; ``takes`` and ``takes_long`` are the options whose argument is the next item)."""

    def reads(argv: Sequence[str], k: int, j: int) -> bool:
        for item in argv[k + 1 : j]:
            if item.startswith("--"):
                if _is_long(item, long):
                    return True
            elif item[:1] in "-+" and any(letter in letters for letter in item[1:]):
                return True
        skip = False
        for item in argv[k + 1 : j]:
            if skip:
                skip = False
            elif item == "--":
                continue
            elif item.startswith("--"):
                skip = "=" not in item and _is_long(item, takes_long)
            elif item[:1] in "-+" and len(item) > 1:
                skip = item[-1] in takes
            else:
                return False  # the script, whose arguments are data
        return True  # item j is the script, or an option

    return reads


def after(
    *options: str, exact: tuple[str, ...] = (), bundled: str = "", first: str = ""
) -> Callable[[Sequence[str], int, int], bool]:
    """The program at k reads item j as code when one of ``options`` (long ones also abbreviated), a short
    option bundle holding one of the ``bundled`` letters, or a first item holding one of the ``first`` letters
    (tar's options without a dash) stands after k, up to j."""
    long = tuple(option for option in options if option.startswith("--"))

    def reads(argv: Sequence[str], k: int, j: int) -> bool:
        for at, item in enumerate(argv[k + 1 : j + 1], k + 1):
            name = item.split("=", 1)[0]
            if name in options or _is_long(item, long, exact):
                return True
            if bundled and item[:1] == "-" and item[1:2] != "-" and any(c in bundled for c in item[1:]):
                return True
            if first and at == k + 1 and item[:1] != "-" and any(c in first for c in item):
                return True
        return False

    return reads


def launcher(argv: Sequence[str], k: int, j: int) -> bool:
    """npx and the like run the package a later item names; pnpm, npm, yarn and bun do with dlx, exec or x."""
    if argv[k].rsplit("/", 1)[-1] in ("npx", "pnpx", "bunx", "uvx"):
        return True
    return any(item in ("dlx", "exec", "x") for item in argv[k + 1 : j])


def wrapped(argv: Sequence[str], k: int, j: int) -> bool:
    """The wrapper at k runs item j as the program: only options, numbers and assignments before j."""
    return not re.match(r"\w+=", argv[j]) and all(re.match(r"[-+\d]|\w+=", item) for item in argv[k + 1 : j])
