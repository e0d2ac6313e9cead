"""The project endpoints and the project record."""

from __future__ import annotations

import json
import re
import time
import zipfile
from urllib.parse import unquote_to_bytes, urlsplit

from .constants import UPLOAD_ID_RE, error_body, iso
from .profiles import IMAGES, MESH, POINTS, RECORD_OWN, SPLATS, VIDEO, extension_of


class ProjectEndpoints:
    """Handler mixin: POST /projects, GET /projects/{name}, GET /projects (vendor)."""

    def create_project(self):
        emu = self.emu
        body = self._read_small_body()
        if body is None:
            return
        try:
            req = json.loads(body.decode("utf-8")) if body.strip() else None
        except (UnicodeDecodeError, ValueError):
            req = None
        if not isinstance(req, dict):
            return self.error(400, "invalid_json")
        uid = req.get("upload_id")
        link = req.get("download_link")
        if uid is None and link is None:
            return self.error(400, "upload_id_or_download_link_required")
        if uid is not None and link is not None:
            return self.error(400, "provide_either_upload_id_or_download_link")
        if uid is not None and (not isinstance(uid, str) or not UPLOAD_ID_RE.match(uid)):
            return self.error(400, "invalid_upload_id")
        if link is not None and (
            not isinstance(link, str) or not re.match(r"https?://[^\s/]+", link) or len(link) > 4096
        ):
            return self.error(400, "invalid_download_link")
        pm = req.get("privacy_mode", 0)
        if isinstance(pm, bool) or pm not in (0, 1, 2):
            return self.error(400, "invalid_privacy_mode")
        title = req.get("title")
        if title is not None and not isinstance(title, str):
            return self.error(400, "invalid_title")
        if emu.flag("project_tariff"):
            return self.error(403, "tariff")
        if emu.flag("quota_exceeded"):
            return self.error(402, "storage_quota_exceeded")
        with emu.projects_lock:  # one project per upload_id, even for two POSTs at once
            status, answer = self._create_project_locked(req, uid, link, pm, title)
        self.respond(status, answer)

    def _create_project_locked(self, req, uid, link, pm, title):
        """Creates (or finds) the project with projects_lock held; returns the answer (status, body)."""
        emu = self.emu
        now = time.time()
        files: list[str] = []
        errors = None
        size = 0
        if uid is not None:
            if emu.live_session(uid) is None:
                return 404, error_body("upload_session_not_found")
            existing = emu.store.one("SELECT * FROM projects WHERE upload_id=?", (uid,))
            if existing is not None:
                emu.store.run("UPDATE projects SET create_count=create_count+1 WHERE id=?", (existing["id"],))
                return 201, {"name": existing["name"], "status": emu.project_status(existing),
                             "message": "processing_started"}
            rows = emu.store.all("SELECT * FROM files WHERE upload_id=? ORDER BY id", (uid,))
            if not rows or any(not r["complete"] for r in rows):
                return 400, error_body("project_creation_failed")
            for r in rows:
                size += r["total"]
                if extension_of(r["name"]) == "zip" and not emu.discard:
                    try:
                        with zipfile.ZipFile(emu.store.blob_path(r["id"])) as z:
                            files.extend(n for n in z.namelist() if not n.endswith("/"))
                        continue
                    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, EOFError):
                        errors = f"could not unpack {r['name']}"
                files.append(r["name"])
            name = uid
            if emu.flag("project_name_collision"):
                name = f"{uid}-{emu.new_id(4)}"
        else:
            try:
                seg = urlsplit(link).path.rstrip("/").rsplit("/", 1)[-1]
                seg = emu.profile.flatten(seg) or ""
            except ValueError:
                seg = ""
            files = [seg] if seg else []
            name = emu.new_id()
        while emu.store.one("SELECT 1 FROM projects WHERE name=?", (name,)) is not None:
            name = f"{uid or 'p'}-{emu.new_id(4)}"
        exts = [extension_of(f) for f in files]
        ps = float(emu.flag("processing_seconds"))
        record = {
            "title": title if title is not None else f"Project {name}",
            "size": size,
            "privacy_mode": pm,
            "public_project": 1 if pm == 0 else 0,
            "setups_count": sum(1 for e in exts if e in IMAGES or e in VIDEO),
            "views": 0,
            "errors": errors,
            "epsg": req.get("epsg"),
            "proj4": req.get("proj4"),
            "coord_unit": req.get("coord_unit", "m"),
            "potree": int(any(e in POINTS for e in exts)),
            "glb": int(any(e in MESH for e in exts)),
            "obj": int(any(e == "obj" for e in exts)),
            "ifc": int(any(e == "ifc" for e in exts)),
            "kml": 0,
            "pdf": 0,
            "geotiff": 0,
            "threedgs": int(any(e in SPLATS for e in exts)),
            "video360": int(any(e in VIDEO for e in exts)),
            "files": files,
            "upload_id": uid,
            "download_link": link,
        }
        if emu.profile.pass_through_options:
            record.update((k, v) for k, v in req.items() if k not in record and k not in RECORD_OWN)
        emu.store.run(
            "INSERT INTO projects (name, upload_id, download_link, title, privacy_mode, created, processing_seconds, record)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (name, uid, link, record["title"], pm, now, ps, json.dumps(record)),
        )
        status = emu.project_status({"created": now, "processing_seconds": ps})
        return 201, {"name": name, "status": status, "message": "processing_started"}

    def get_project(self, name_raw):
        try:
            name = unquote_to_bytes(name_raw.encode("latin-1")).decode("utf-8")
        except (UnicodeDecodeError, UnicodeEncodeError):
            return self.error(404, "project_not_found")
        prow = self.emu.store.one("SELECT * FROM projects WHERE name=?", (name,))
        if prow is None:
            return self.error(404, "project_not_found")
        self.emu.store.run("UPDATE projects SET poll_count=poll_count+1 WHERE id=?", (prow["id"],))
        st = self.emu.project_status(prow)
        if prow["discarded_status"] is not None:  # its session was deleted before it was ready
            return self.respond(200, {"name": name, "status": st, "deleted": True, "errors": 1})
        if st < 100:
            return self.respond(200, {"name": name, "status": st})
        rec = json.loads(prow["record"])
        out = {
            "id": prow["id"],
            "name": name,
            "title": prow["title"],
            "status": 100,
            "created": iso(prow["created"]),
            "updated": iso(prow["created"] + max(0.0, prow["processing_seconds"])),
        }
        out.update(rec)
        self.respond(200, self.emu.profile.ready_record(out))

    def list_projects(self):
        emu = self.emu
        rows = emu.store.all("SELECT * FROM projects ORDER BY id")
        self.respond(200, {"projects": [
            {"name": r["name"], "title": r["title"], "status": emu.project_status(r),
             "privacy_mode": r["privacy_mode"], "created": iso(r["created"]),
             "deleted": r["discarded_status"] is not None}
            for r in rows
        ]})
