"""Where mount options come from besides the command line: the config file, the
`-o key=value` list of mount(8)/fstab, and the API key's sources.

The config file is `$XDG_CONFIG_HOME/fs360/config.toml` (default
`~/.config/fs360/config.toml`). Its keys are the long mount flags with `_`
(`api_url`, `api_key_file`, `cache_dir`, `bwlimit`, ...; `options` for `-o`);
a `[mount."/abs/mountpoint"]` table overrides them for that mountpoint. The
command line overrides the file. Every value of every table is checked against the
schema (options.py); relative paths in the file are taken from its folder.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

from .errors import SettingError
from .options import CONFIG_KEYS, WEBDAV_KEYS, WEBDAV_TABLE, Option, Origin, option_named
from .systemd import credential_key

# mount(8) options that are for mount(8), systemd or the kernel's generic flags,
# never for fs360: accepted in `-o` and ignored.
IGNORED_MOUNT_OPTIONS = {"_netdev", "noauto", "auto", "nofail", "defaults", "rw", "user", "users", "nouser",
                         "owner", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "async", "atime", "noatime",
                         "relatime"}
# FUSE options passed to the kernel mount as they are.
FUSE_OPTIONS = {"allow_other"}


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "fs360" / "config.toml"


def load_config(mountpoint: str, path: Path | None = None, webdav: bool = False) -> list[tuple[Option, object, Origin]]:
    """The file's values for `mountpoint`, checked, in the order they apply (the global keys, then
    its own table); [] without a file. Every other mount's table is checked too, so a typo there
    is found now and not at that mount. Relative paths are taken from the file's folder.
    `webdav`: for `fs360 serve webdav`, the global keys then the [webdav] table."""
    path = path or config_path()
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise SettingError(f"the config file {path} is not a regular file: make it a TOML text file")
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise SettingError(f"the config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB: is it the "
                               f"right file?")
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        if os.path.islink(path):  # a dangling link is no "no config": the user meant one
            raise SettingError(f"the config file {path} is a link to {os.readlink(path)}, which does not exist") \
                from None
        return []
    except OSError as exc:
        raise SettingError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SettingError(f"the config file {path} is not text (UTF-8): write it as TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingError(f"{path}: {exc}") from None
    tables = data.pop("mount", {})
    if not isinstance(tables, dict):
        raise SettingError(f'{path}: mount = {tables!r}: not a table; allowed: [mount."/mountpoint"] tables')
    served = data.pop(WEBDAV_TABLE, {})
    if not isinstance(served, dict):
        raise SettingError(f"{path}: {WEBDAV_TABLE} = {served!r}: not a table; allowed: a [{WEBDAV_TABLE}] table")
    values = _checked(data, Origin("file", str(path.parent), str(path)), strict=True)
    served_values = _checked(served, Origin("file", str(path.parent), str(path), WEBDAV_TABLE), strict=webdav,
                             keys=WEBDAV_KEYS)
    for key, table in tables.items():
        if not isinstance(table, dict):
            raise SettingError(f'{path}: mount.{key}: not a table; allowed: [mount."/mountpoint"] tables')
        if not os.path.isabs(os.path.expanduser(key)):
            raise SettingError(f'{path}: [mount."{key}"]: not an absolute path; allowed: the absolute path '
                              f'of a mountpoint')
        ours = os.path.normpath(os.path.expanduser(key)) == mountpoint
        checked = _checked(table, Origin("file", str(path.parent), str(path), key), strict=ours)
        if ours:
            values += checked
    return values + served_values if webdav else values


def _checked(table: dict, origin: Origin, strict: bool, keys=CONFIG_KEYS) -> list[tuple[Option, object, Origin]]:
    """Each key of one table checked against the schema (files must exist only when `strict`)."""
    return [(option, option.check(raw, origin, require_files=strict), origin)
            for option, raw in ((option_named(key, origin, keys), raw) for key, raw in table.items())]


def mount_option_values(items: list[str], origin: Origin) -> tuple[list[tuple[Option, object, Origin]], list[str]]:
    """`-o a=1,b,allow_other` checked: ([(option, value, origin)], ["allow_other"]); mount(8)'s own ignored.
    A key without a value is a boolean switched on."""
    values: list[tuple[Option, object, Origin]] = []
    fuse: list[str] = []
    for item in ",".join(items).split(","):
        item = item.strip()
        if not item or item in IGNORED_MOUNT_OPTIONS or item.startswith(("x-", "comment=")):
            continue
        if item in FUSE_OPTIONS:
            fuse.append(item)
            continue
        key, _, raw = item.partition("=")
        option = option_named(key, origin, tuple(k for k in CONFIG_KEYS if k != "options"))
        values.append((option, option.check(raw, origin), origin))
    return values, fuse


# A config file is a few lines; far more is not one (a link to /dev/zero read whole ran out of memory).
MAX_CONFIG_BYTES = 1024 * 1024


def check_key_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise SettingError(f"cannot read the key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SettingError(f"the key file {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
                          f"fix it with: chmod 600 {path}")


def read_api_key(key_file: str | None, env_names: tuple[str, ...]) -> str:
    """The key, from (in order) the key file, systemd's credential, the environment."""
    if key_file:
        path = Path(key_file).expanduser()
        check_key_file(path)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingError(f"cannot read the key file: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SettingError(f"the key file {path} is not text (UTF-8): put the API key in it, on one line") \
                from None
        if not key:
            raise SettingError(f"the key file {path} is empty")
        return key
    key = credential_key()
    if key:
        return key
    for name in env_names:
        if os.environ.get(name):
            return os.environ[name].strip()
    raise SettingError("no API key: set FS360_API_KEY, or give api_key_file (--api-key-file, the config file "
                      "or -o api_key_file=FILE), or use --local")
