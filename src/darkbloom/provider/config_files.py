"""The provider's files in its one config dir (provider.md "Config"): where the dir is, the bounded
reads of provider.toml and the token, and the token's writes (shared with `darkbloom login`).

The token file holds the provider token and a newline, mode 0600 in a 0700 dir: written whole or
not at all (a crash mid-write must not leave half a token that then fails every registration).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path

from darkbloom.textfile import UnreadableFile, read_small

CONFIG_FILE = "provider.toml"
TOKEN_FILE = "token"
CONFIG_DIR_ENV = "DARKBLOOM_PROVIDER_CONFIG_DIR"
# A config file is a few hundred bytes; anything near this is not one (a log, a binary, /dev/zero).
MAX_CONFIG_BYTES = 1024 * 1024
MAX_TOKEN_BYTES = 4096
# Printable ASCII without spaces: what a bearer token can be (darkbloom-pt-<hex> in practice).
_TOKEN = re.compile(r"[\x21-\x7e]{1,1024}")


class ProviderConfigError(ValueError):
    """A config file (or the token file) that cannot be used, said in one line naming the file, the
    key and what is allowed (never a value: it may be a secret). The `darkbloom` command prints it
    as that one line and exits 2, whichever command built ProviderSettings (cli/config_cmd.py)."""


def default_config_dir() -> Path:
    """The one config dir per platform: ~/Library/Application Support/darkbloom on macOS,
    $XDG_CONFIG_HOME/darkbloom (when absolute, as the XDG spec requires) or ~/.config/darkbloom
    elsewhere. DARKBLOOM_PROVIDER_CONFIG_DIR overrides it (read by ProviderSettings)."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "darkbloom"
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "darkbloom"
    return Path.home() / ".config" / "darkbloom"


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and every missing parent mode 0700 (mkdir(parents=True) gives parents the
    default mode: `models download` making <config>/models first would leave the config dir, and
    later the token beside it, open to other users). An existing dir is left as it is."""
    missing: list[Path] = []
    here = path
    while not here.is_dir() and here != here.parent:
        missing.append(here)
        here = here.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile (a concurrent command)
            directory.mkdir(mode=0o700)
    return path


def read_bounded_text(path: Path, limit: int, what: str) -> str | None:
    """textfile.read_small, with its refusals as ProviderConfigError."""
    try:
        return read_small(path, limit, what)
    except UnreadableFile as exc:
        raise ProviderConfigError(str(exc)) from None


def is_token(text: str) -> bool:
    """Whether ``text`` can be a provider token (what save_token accepts)."""
    return _TOKEN.fullmatch(text) is not None


def read_token(config_dir: Path) -> str | None:
    """The token saved by `darkbloom login`, or None when there is none (or the file is empty)."""
    path = config_dir / TOKEN_FILE
    text = read_bounded_text(path, MAX_TOKEN_BYTES, "provider token file")
    if text is None or not text.strip():
        return None
    token = text.strip()
    if _TOKEN.fullmatch(token) is None:  # never echo the content: it may be a secret anyway
        raise ProviderConfigError(f"{path}: does not hold a provider token (one line, no spaces); "
                                  "run `darkbloom login` again or delete the file")
    return token


def save_token(config_dir: Path, token: str) -> Path:
    """Write the token (and a newline) to <config_dir>/token, mode 0600 from creation, replacing
    any earlier one atomically; the dir is created 0700. Returns the file's path."""
    if _TOKEN.fullmatch(token) is None:
        raise ValueError("a provider token is one line of printable characters without spaces")
    make_private_dir(config_dir)
    path = config_dir / TOKEN_FILE
    # mkstemp creates the file 0600 in the same dir, so the rename is atomic and no other user can
    # open it in between.
    fd, temp = tempfile.mkstemp(prefix=".token-", dir=config_dir)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return path


def forget_token(config_dir: Path) -> bool:
    """Delete the saved token; True when there was one."""
    try:
        (config_dir / TOKEN_FILE).unlink()
    except FileNotFoundError:
        return False
    return True
