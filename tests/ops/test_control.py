"""The control channel on its own: a private socket, reachable however long the cache path."""

from __future__ import annotations

import stat

from fs360 import control


def test_control_socket_is_private_and_works_past_the_sun_path_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    cache = tmp_path / ("deep-" * 12) / ("er-" * 10) / "cache"
    cache.mkdir(parents=True)
    assert len(str(cache / control.SOCKET_NAME)) > 108
    seen = []
    server = control.ControlServer(cache, lambda request: seen.append(request) or {"ok": True, "echo": request})
    try:
        assert stat.S_IMODE((cache / control.SOCKET_NAME).stat().st_mode) == 0o600
        control.register("/mnt/somewhere", cache)
        assert control.cache_dir_of("/mnt/somewhere") == cache
        assert control.request("/mnt/somewhere", {"cmd": "info"}) == {"ok": True, "echo": {"cmd": "info"}}
        assert seen == [{"cmd": "info"}]
    finally:
        server.close()
    assert not (cache / control.SOCKET_NAME).exists()
    assert control.cache_dir_of("/mnt/elsewhere") is None


def test_a_mount_registered_without_xdg_runtime_dir_is_found_from_a_login_shell(tmp_path, monkeypatch):
    """mount(8) at boot (an fstab line) runs the daemon with no XDG_RUNTIME_DIR, a login shell has
    one: `fs360 status`, pause, web and unmount --wait said the running mount had no daemon."""
    monkeypatch.setattr(control, "FALLBACK_RUNTIME_DIR", str(tmp_path / "fallback-{uid}"))
    cache, stale = tmp_path / "cache", tmp_path / "stale-cache"
    cache.mkdir()
    stale.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    control.register("/mnt/360", stale)  # a killed daemon's, from a login shell: no socket is there
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    server = control.ControlServer(cache, lambda request: {"ok": True})
    try:
        control.register("/mnt/360", cache)  # as the daemon mount(8) started registers
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
        assert control.cache_dir_of("/mnt/360") == cache
        assert control.request("/mnt/360", {"cmd": "info"}) == {"ok": True}
    finally:
        server.close()
