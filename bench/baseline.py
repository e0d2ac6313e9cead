"""The baseline: a plain sequential client, written the way the API guide's example is.

requests, 8 MiB chunks, a resume loop (on any failure ask the server for
`received` and go on from there), uploading straight from the source files.
"""

from __future__ import annotations

import os
import time

import requests

CHUNK = 8 * 1024 * 1024


def upload_files(base_url: str, api_key: str, paths: list[str]) -> str:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_key}"
    upload_id = session.post(f"{base_url}/uploads", timeout=60).json()["upload_id"]
    for path in paths:
        upload_one(session, base_url, upload_id, path)
    return upload_id


def upload_one(session: requests.Session, base_url: str, upload_id: str, path: str) -> None:
    name = os.path.basename(path)
    url = f"{base_url}/uploads/{upload_id}/{requests.utils.quote(name, safe='')}"
    total = os.path.getsize(path)
    with open(path, "rb") as f:
        if total <= CHUNK:
            data = f.read()
            response = session.put(url, data=data, headers={"Content-Type": "application/octet-stream"}, timeout=60)
            response.raise_for_status()
            return
        offset = 0
        while offset < total:
            f.seek(offset)
            data = f.read(CHUNK)
            end = offset + len(data) - 1
            try:
                response = session.put(url, data=data, timeout=60, headers={
                    "Content-Type": "application/octet-stream", "Content-Range": f"bytes {offset}-{end}/{total}"})
                if response.status_code == 409:
                    offset = response.json()["received"]
                    continue
                response.raise_for_status()
                offset = response.json()["received"]
            except requests.RequestException:
                time.sleep(1)
                offset = session.get(url, timeout=60).json()["received"]
