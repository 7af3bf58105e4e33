"""The reference cluster's Python workload: a tiny HTTP service.

It answers GET / with the VM's hostname and a greeting read from
/etc/procurator/greeting (a file the VM profile installs), so a change to the
profile's files is visible from outside after the VM is replaced.
"""

import http.server
import socket

GREETING_FILE = "/etc/procurator/greeting"


def greeting() -> str:
    try:
        with open(GREETING_FILE, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "hello"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{greeting()} from {socket.gethostname()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    print("workload listening on :8000", flush=True)
    http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
