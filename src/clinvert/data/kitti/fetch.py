"""Download the public KITTI Masks file (Zenodo record 3931823), or say what to place where.

The record's metadata (``https://zenodo.org/api/records/3931823``) gives the file's MD5; the file
is downloaded to ``DIR/kitti_peds_v2.pickle.part`` with a progress bar, checked against that MD5
and with :func:`~clinvert.data.kitti.masks.load_kitti_masks`, then renamed into place. Without a
network (as on the machines this project is developed on) the error says in one line which file to
download by hand and where to put it.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from clinvert.data.kitti.masks import FILENAME, URL, load_kitti_masks
from clinvert.errors import ConfigError

RECORD_API = "https://zenodo.org/api/records/3931823"
TIMEOUT_S = 20.0


def _md5_from_record(api: str) -> str | None:
    """The file's MD5 from the Zenodo record's metadata (None when the record does not list it)."""
    with urllib.request.urlopen(api, timeout=TIMEOUT_S) as resp:
        record = json.loads(resp.read().decode())
    for entry in record.get("files", []):
        if entry.get("key") == FILENAME and str(entry.get("checksum", "")).startswith("md5:"):
            return entry["checksum"][4:]
    return None


def fetch_kitti_masks(
    out_dir: str | Path, url: str = URL, api: str | None = RECORD_API, progress: bool = True
) -> Path:
    """Download the KITTI Masks pickle into ``out_dir``; returns its path.

    Raises:
        ConfigError: one line: the network is unreachable (download ``url`` by hand into
            ``out_dir``), the checksum differs, or the file is not the expected pickle.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    target = out_dir / FILENAME
    if target.is_file():
        load_kitti_masks(target)
        return target
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out: {out_dir} exists and is not a directory")
    hand = f"download {url} by hand and place it at {target}"
    part = out_dir / (FILENAME + ".part")
    try:
        md5 = _md5_from_record(api) if api else None
        out_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.md5()
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp, open(part, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, disable=not progress) as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"fetch: cannot download ({reason}); {hand}") from None
    if md5 is not None and digest.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise ConfigError(
            f"fetch: checksum mismatch (md5 {digest.hexdigest()}, expected {md5}); {hand}"
        )
    try:
        load_kitti_masks(part)
    except ConfigError as exc:
        part.unlink(missing_ok=True)
        raise ConfigError(
            f"fetch: the downloaded file is not KITTI Masks ({exc}); {hand}"
        ) from None
    os.replace(part, target)
    return target
