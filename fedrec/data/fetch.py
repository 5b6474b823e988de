"""Download MovieLens 100K from GroupLens (where a network is available).

The licence forbids redistribution, so fedrec never ships the files: each user
fetches them from the source, and the archive is checked against its known MD5.
"""

from __future__ import annotations

import hashlib
import io
import urllib.request
import zipfile
from pathlib import Path

from fedrec.data.loaders import ML100K, ML100K_FILES
from fedrec.errors import DataError

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_MD5 = "0e33842e24a9c977be4e0107933c0723"  # of ml-100k.zip (4,924,029 bytes)
KEEP = (*ML100K_FILES, "u.info", "u.occupation", "README")


def extract_ml100k(archive: bytes, data_dir: Path) -> Path:
    """Check ``archive`` against the known MD5 and unpack the files fedrec reads."""
    digest = hashlib.md5(archive).hexdigest()
    if digest != ML100K_MD5:
        raise DataError(f"ml-100k.zip has MD5 {digest}, expected {ML100K_MD5}: refusing a corrupted or altered archive")
    target = data_dir / ML100K
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for name in KEEP:
            (target / name).write_bytes(zf.read(f"{ML100K}/{name}"))
    return target


def fetch_ml100k(data_dir: Path, *, url: str = ML100K_URL, timeout: float = 60.0) -> Path:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            archive = response.read()
    except OSError as err:
        raise DataError(
            f"cannot download {url} ({err}). Offline? Download ml-100k.zip elsewhere, unzip it into "
            f"{data_dir} so that {data_dir / ML100K / 'u.data'} exists, and set FEDREC_DATA_DIR={data_dir}."
        ) from None
    return extract_ml100k(archive, data_dir)
