"""One reader for graphcache's versioned JSON files (calibration, tuned config, export plan).

Each file is a JSON object with ``schema`` and ``version``; a missing file, a file that is not JSON, another
schema or another version is refused with the caller's error class, naming the file, what was found and
how to make a good one (``fix``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from graphcache.errors import GraphcacheError


def read_versioned(path: str | Path, *, schema: str, version: int, kind: str, error: type[GraphcacheError],
                   fix: str, missing: str | None = None) -> dict[str, Any]:
    """The checked content of ``path``, a graphcache ``kind`` ("calibration file", ...). ``missing``: the
    message for a file that is not there (default: "<kind> <path> not found; <fix>")."""
    path = Path(path)
    if not path.is_file():
        raise error(missing if missing is not None else f"{kind} {path} not found; {fix}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{kind} {path} is corrupt (not JSON: {err}); {fix}") from err
    if not isinstance(data, dict) or data.get("schema") != schema:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise error(f"{path} is not a graphcache {kind} (schema {found!r}, expected {schema!r}); {fix}")
    if data.get("version") != version:
        raise error(f"{path} has {kind} version {data.get('version')!r}; this graphcache reads version "
                    f"{version}; {fix}")
    return data
