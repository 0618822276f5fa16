"""http_unix.py SOCKET DIR: python3's http.server serving DIR over a unix stream socket.

Prints "serving" once it listens. Each request is served by the standard
SimpleHTTPRequestHandler; the server counts requests and sends the count in an
X-Requests header, so a client can see that state survived a checkpoint."""
import http.server
import os
import socketserver
import sys

sock, root = sys.argv[1], sys.argv[2]
count = 0


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=root, **kw)

    def address_string(self):
        return "unix"

    def end_headers(self):
        global count
        count += 1
        self.send_header("X-Requests", str(count))
        super().end_headers()


class Server(socketserver.UnixStreamServer):
    pass


if os.path.exists(sock):
    os.unlink(sock)
with Server(sock, Handler) as srv:
    print("serving", flush=True)
    srv.serve_forever()
