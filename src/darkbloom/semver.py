"""Provider versions (protocol.md §2's minimum): semantic versions, compared as SemVer 2.0 says,
so "1.2" equals "1.2.0" and "1.2.0-rc.1" comes before "1.2.0"."""

from __future__ import annotations

import re

_VERSION = re.compile(r"^v?(\d{1,9})(?:\.(\d{1,9}))?(?:\.(\d{1,9}))?(?:-([0-9A-Za-z.-]{1,64}))?"
                      r"(?:\+[0-9A-Za-z.-]{0,64})?$")
Key = tuple[tuple[int, int, int], tuple[tuple[int, int | str], ...] | None]


def parse(text: str) -> Key | None:
    """A sortable key for ``text``, or None if it is no version. A release sorts after all of
    its pre-releases (``None`` for "no pre-release" is replaced by a high sentinel on compare)."""
    match = _VERSION.match(text.strip()[:160])
    if match is None:
        return None
    core = tuple(int(part or 0) for part in match.groups()[:3])
    pre = match.group(4)
    fields = None if pre is None else tuple(
        (0, int(f)) if f.isdigit() else (1, f) for f in pre.split("."))
    return (core[0], core[1], core[2]), fields


def older(version: str, minimum: str) -> bool:
    """Whether ``version`` is below ``minimum``; a version that cannot be read counts as older."""
    have, want = parse(version), parse(minimum)
    if want is None:
        raise ValueError(f"not a version: {minimum!r}")
    if have is None:
        return True
    if have[0] != want[0]:
        return have[0] < want[0]
    if have[1] is None:
        return False  # a release is never below its own pre-releases or itself
    if want[1] is None:
        return True  # a pre-release is below the release
    return have[1] < want[1]
