"""systemd: the sd_notify protocol, credentials, and the user unit template.

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


def unit_text(command: str | None = None) -> str:
    """The unit template; `command` defaults to this installation's interpreter.
    %f is the unescaped instance with a leading "/": the instance is named with
    `systemd-escape --path`, so "fs360@mnt-360.service" mounts /mnt/360."""
    command = command or f"{sys.executable} -m fs360.cli"
    return f"""# fs360: mount the 360-for-you upload API at a directory (user unit template).
# Enable with: fs360 install-unit MOUNTPOINT   (or: systemctl --user enable --now fs360@$(systemd-escape --path MOUNTPOINT))
# Settings come from ~/.config/fs360/config.toml; the key from the credential below.
[Unit]
Description=fs360 upload mount at %f
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
# A daemon killed (or crashed) leaves a dead mount behind: released before each start.
ExecStartPre=-{command} recover %f
ExecStart={command} mount -f %f
# The key file stays readable by you only; systemd hands a copy to the service.
LoadCredential={CREDENTIAL_NAME}:%E/fs360/api-key
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


def install_unit(mountpoint: str, print_only: bool) -> str:
    """Writes the template and enables the instance; returns what to tell the user."""
    instance = f"fs360@{escape_path(mountpoint)}.service"
    if print_only:
        return unit_text() + f"\n# instance for {mountpoint}: {instance}\n"
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    unit_dir = config / "systemd" / "user"
    unit_dir.mkdir(parents=True, exist_ok=True)
    (unit_dir / UNIT_NAME).write_text(unit_text())
    lines = [f"wrote {unit_dir / UNIT_NAME}",
             f"the key goes in {config / 'fs360' / 'api-key'} (chmod 600)"]
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
    return "\n".join(lines)
