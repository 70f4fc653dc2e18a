"""The demo's application: it keeps writing and reading its data, as a database
would, and reports what happened in a small JSON status file.

Usage: python app.py DATA_DIR STATUS_FILE
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    data, status_file = Path(sys.argv[1]), Path(sys.argv[2])
    counts = {"ok": 0, "errors": 0}
    last_error = None
    n = 0
    while True:
        n += 1
        try:
            with open(data / "wal.log", "ab") as wal:
                wal.write(b"record %d\n" % n)
                wal.flush()
                os.fsync(wal.fileno())
            (data / "000001.sst").read_bytes()
            counts["ok"] += 1
        except OSError as exc:
            counts["errors"] += 1
            last_error = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        tmp = status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({**counts, "last_error": last_error, "time": time.time()}))
        tmp.replace(status_file)
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
