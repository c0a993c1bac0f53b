"""The container's HEALTHCHECK: exit 0 when relay answers `GET /healthz` on its port.

Plain standard library, so the image needs no curl: the port is RELAY_PORT, else PORT, else
8000, the order `relay serve` reads them in."""

import os
import sys
import urllib.request

port = os.environ.get("RELAY_PORT") or os.environ.get("PORT") or "8000"
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except OSError as exc:
    print(f"relay is not answering on port {port}: {exc}", file=sys.stderr)
    sys.exit(1)
