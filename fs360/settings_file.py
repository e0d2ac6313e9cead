"""Where mount options come from besides the command line: the config file, the
`-o key=value` list of mount(8)/fstab, and the API key's sources.

The config file is `$XDG_CONFIG_HOME/fs360/config.toml` (default
`~/.config/fs360/config.toml`). Its keys are the long mount flags with `_`
(`api_url`, `api_key_file`, `cache_dir`, `bwlimit`, ...; `options` for `-o`);
a `[mount."/abs/mountpoint"]` table overrides them for that mountpoint. The
command line overrides the file.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

from .systemd import credential_key

# mount(8) options that are for mount(8), systemd or the kernel's generic flags,
# never for fs360: accepted in `-o` and ignored.
IGNORED_MOUNT_OPTIONS = {"_netdev", "noauto", "auto", "nofail", "defaults", "rw", "user", "users", "nouser",
                         "owner", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "async", "atime", "noatime",
                         "relatime"}
# FUSE options passed to the kernel mount as they are.
FUSE_OPTIONS = {"allow_other"}


class ConfigError(Exception):
    pass


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "fs360" / "config.toml"


def load_config(mountpoint: str, allowed_keys: set[str], path: Path | None = None, webdav: bool = False) -> dict:
    """The file's values for `mountpoint` (global keys, then its own table), or for `serve webdav`
    (global keys, then the [webdav] table); {} without a file."""
    path = path or config_path()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    tables = data.pop("mount", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: 'mount' must be a table of [mount.\"/mountpoint\"] tables")
    webdav_table = data.pop("webdav", {})
    if not isinstance(webdav_table, dict):
        raise ConfigError(f"{path}: 'webdav' must be a table ([webdav])")
    values = dict(data)
    if webdav:
        values.update(webdav_table)
    for key, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: mount.{key} must be a table")
        if os.path.abspath(os.path.expanduser(key)) == mountpoint:
            values.update(table)
    for key, value in values.items():
        if key not in allowed_keys:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(allowed_keys))})")
        if not isinstance(value, (str, int, float, bool, list)):
            raise ConfigError(f"{path}: {key} must be a string, number, boolean or list")
    return values


def parse_mount_options(items: list[str]) -> tuple[dict[str, str], list[str]]:
    """`-o a=1,b,allow_other` -> ({"a": "1", "b": ""}, ["allow_other"]); mount(8)'s own ignored."""
    values: dict[str, str] = {}
    fuse: list[str] = []
    for item in ",".join(items).split(","):
        item = item.strip()
        if not item or item in IGNORED_MOUNT_OPTIONS or item.startswith(("x-", "comment=")):
            continue
        if item in FUSE_OPTIONS:
            fuse.append(item)
            continue
        key, _, value = item.partition("=")
        values[key.replace("-", "_")] = value
    return values, fuse


def check_key_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"the key file {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
                          f"fix it with: chmod 600 {path}")


def read_api_key(key_file: str | None, env_names: tuple[str, ...]) -> str:
    """The key, from (in order) the key file, systemd's credential, the environment."""
    if key_file:
        path = Path(key_file).expanduser()
        check_key_file(path)
        try:
            key = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the key file: {exc.strerror}") from None
        if not key:
            raise ConfigError(f"the key file {path} is empty")
        return key
    key = credential_key()
    if key:
        return key
    for name in env_names:
        if os.environ.get(name):
            return os.environ[name].strip()
    raise ConfigError("no API key: set FS360_API_KEY, or give api_key_file (--api-key-file, the config file "
                      "or -o api_key_file=FILE), or use --local")
