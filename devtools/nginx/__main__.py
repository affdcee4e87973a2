"""``python -m devtools.nginx``: Kong's nginx on a loopback port, printing each logged line.

Send it requests (curl, raw sockets) to see the request fields Kong's basic serializer
would log for them. Runs until SIGINT/SIGTERM; the prefix directory is removed then.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from . import KongNginx, NginxUnavailable


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run nginx until interrupted, copying its lines to stdout as they are written."""
    parser = argparse.ArgumentParser(prog="python -m devtools.nginx", description=__doc__)
    parser.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)
    try:
        nginx = KongNginx(port=args.port)
    except NginxUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _interrupt)
    with nginx:
        print(f"nginx on http://127.0.0.1:{nginx.port} (prefix {nginx.prefix})", flush=True)
        printed = 0
        try:
            while True:
                data = nginx.entries_path.read_bytes()
                sys.stdout.buffer.write(data[printed:])
                sys.stdout.flush()
                printed = len(data)
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
