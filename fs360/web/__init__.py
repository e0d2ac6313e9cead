"""The local dashboard and /metrics, served by the daemon on loopback (see server.py).

It reads the mount's snapshot (fs/status.py) and acts through the daemon's control handler
(pause, resume, bwlimit), so it holds no state and no logic of its own beyond HTTP.
"""
