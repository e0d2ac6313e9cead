"""systemd and mount(8): the sd_notify protocol, credentials, the user unit template, and the
mount helper (`install-helper`).

sd_notify is one AF_UNIX datagram to $NOTIFY_SOCKET ("@name" is an abstract
socket); no library needed. Only the main process (`fs360 mount -f`) speaks
it, so the unit works with systemd's default NotifyAccess=main.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

CREDENTIAL_NAME = "fs360-api-key"
UNIT_NAME = "fs360@.service"


class Notifier:
    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address

    def __bool__(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto("\n".join(lines).encode("utf-8", "replace"), self.address)
            except OSError:
                pass  # the manager went away: nothing to tell


def credential_key() -> str | None:
    """The key systemd handed over with LoadCredential=fs360-api-key:FILE, if any."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    try:
        return (Path(directory) / CREDENTIAL_NAME).read_text().strip() or None
    except OSError:
        return None


# The command in contrib/fs360@.service: where `pipx install .` puts the script.
PIPX_COMMAND = "%h/.local/bin/fs360"


# The key's default place, as a credential source the unit hands over (%E: ~/.config).
DEFAULT_KEY_FILE = "%E/fs360/api-key"
DOCUMENTATION = "https://360-for-you.com/ man:fusermount3(1)"


def unit_text(command: str | None = None, key_file: str = DEFAULT_KEY_FILE) -> str:
    """The unit template; `command` defaults to this installation's interpreter, `key_file` is
    the file systemd hands over as the key (the config's api_key_file, when it names one).
    %f is the unescaped instance with a leading "/": the instance is named with
    `systemd-escape --path`, so "fs360@mnt-360.service" mounts /mnt/360."""
    command = command or f"{sys.executable} -m fs360.cli"
    return f"""# fs360: mount the 360-for-you upload API at a directory (user unit template).
# Enable with: fs360 install-unit MOUNTPOINT   (or: systemctl --user enable --now fs360@$(systemd-escape --path MOUNTPOINT))
# Settings come from ~/.config/fs360/config.toml; the key from the credential below.
# To start at boot and keep running after you log out: loginctl enable-linger $USER
[Unit]
Description=fs360 upload mount at %f
Documentation={DOCUMENTATION}
# No network-online.target: user units cannot order after it. A mount that cannot reach
# the server at start fails and is started again (Restart=); once up, uploads wait out outages.

[Service]
Type=notify
# A daemon killed (or crashed) leaves a dead mount behind: released before each start.
ExecStartPre=-{command} recover %f
ExecStart={command} mount -f %f
# The key file stays readable by you only; systemd hands a copy to the service.
LoadCredential={CREDENTIAL_NAME}:{key_file}
Restart=on-failure
RestartSec=10
TimeoutStopSec=60

[Install]
WantedBy=default.target
"""


def escape_path(mountpoint: str) -> str:
    """What `systemd-escape --path` prints, without needing the tool."""
    path = os.path.normpath(mountpoint).strip("/")
    if not path:
        return "-"
    out = []
    for index, char in enumerate(path):
        if char == "/":
            out.append("-")
        elif char.isascii() and (char.isalnum() or char in ":_" or (char == "." and index > 0)):
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(out)


def install_unit(mountpoint: str, print_only: bool, key_file: str | None = None) -> str:
    """Writes the template and enables the instance; returns what to tell the user. `key_file`:
    the config's api_key_file, if it names one (else the key is looked for in the default place)."""
    instance = f"fs360@{escape_path(mountpoint)}.service"
    text = unit_text(key_file=key_file or DEFAULT_KEY_FILE)
    if print_only:
        return text + f"\n# instance for {mountpoint}: {instance}\n"
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    unit_dir = config / "systemd" / "user"
    unit_dir.mkdir(parents=True, exist_ok=True)
    (unit_dir / UNIT_NAME).write_text(text)
    lines = [f"wrote {unit_dir / UNIT_NAME}",
             f"the key is read from {key_file or config / 'fs360' / 'api-key'} (chmod 600)"]
    if shutil.which("systemctl") is None:
        lines.append(f"systemctl is missing: not enabled; run `systemctl --user enable --now {instance}` "
                     "where systemd runs")
        return "\n".join(lines)
    result = subprocess.run(["systemctl", "--user", "daemon-reload"], capture_output=True, text=True)
    if result.returncode == 0:
        result = subprocess.run(["systemctl", "--user", "enable", instance], capture_output=True, text=True)
    if result.returncode != 0:
        lines.append(f"could not enable {instance}: {result.stderr.strip() or result.stdout.strip()}")
    else:
        lines.append(f"enabled {instance}; start it now with `systemctl --user start {instance}`")
    if not _lingers():
        lines.append("it starts when you log in and stops when you log out; to start it at boot and keep it "
                     "running: loginctl enable-linger $USER")
    return "\n".join(lines)


def _lingers() -> bool:
    """Whether systemd keeps this user's units running without a login (False when unknown)."""
    user = os.environ.get("USER") or str(os.getuid())
    try:
        result = subprocess.run(["loginctl", "show-user", user, "--property=Linger"], capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.stdout.strip() == "Linger=yes"


# --- mount(8)'s helper -----------------------------------------------------------------------

HELPER_NAME = "sbin/mount.fuse.fs360"  # libmount looks for helpers in /sbin only
HELPER_MARK = "# mount(8) helper for fs360"


class HelperExists(Exception):
    """Another installation's helper (or a file not fs360's) is in the way; the message says whose."""


def helper_text() -> str:
    return (f"#!/bin/sh\n{HELPER_MARK}, written by `fs360 install-helper`.\n"
            f"# mount -t fuse.fs360 none MOUNTPOINT -o api_url=URL,api_key_file=FILE\n"
            f"exec {sys.executable} -m fs360.cli mount-helper \"$@\"\n")


def install_helper(prefix: str, force: bool) -> Path:
    """Writes PREFIX/sbin/mount.fuse.fs360 for this installation; refuses to replace another
    installation's (or anything else) unless `force`. Raises HelperExists or OSError."""
    path = Path(prefix) / HELPER_NAME
    text = helper_text()
    try:
        current = path.read_text(errors="replace")
    except FileNotFoundError:
        current = None
    if current is not None and current != text and not force:
        if HELPER_MARK in current:
            runs = next((line.split()[1] for line in current.splitlines() if line.startswith("exec ")), "?")
            raise HelperExists(f"{path} belongs to another fs360 installation (it runs {runs}); "
                               f"--force replaces it with this one ({sys.executable})")
        raise HelperExists(f"{path} exists and is not fs360's helper; --force replaces it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, path)
    return path
