"""
A client that pipelines requests past QUIT and reads its replies only when
told to (a line on stdin), then reports how the connection ended, as JSON.
Used by the tests of the server's closing (tests/server.test.ts and
tests/security.test.ts): a server that closes at once while such input is
still arriving resets the connection, and the kernel drops replies the
client has not read yet.

usage: quit-pipeliner.py PORT CA_FILE|- GETS JUNK_BYTES
With a CA file it speaks TLS and counts a close without close_notify as an
error (suppress_ragged_eofs=False).
"""
import json
import socket
import ssl
import sys

port, ca, gets, junk_bytes = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sock = socket.create_connection(("127.0.0.1", port))
if ca != "-":
    context = ssl.create_default_context(cafile=ca)
    sock = context.wrap_socket(sock, server_hostname="localhost", suppress_ragged_eofs=False)

sock.sendall(b"PUT big " + b"v" * 900 + b"\n")
first = b""
while b"\n" not in first:
    first += sock.recv(65536)

send_error = None
try:
    sock.sendall(b"GET big\n" * gets + b"QUIT\n" + b"PING\n" * (junk_bytes // 5))
except OSError as e:
    send_error = repr(e)
print("sent", flush=True)
sys.stdin.readline()

data, ended_by = b"", "eof"
while True:
    try:
        chunk = sock.recv(65536)
    except Exception as e:
        ended_by = repr(e)
        break
    if not chunk:
        break
    data += chunk
lines = data.split(b"\n")[:-1]
print(json.dumps({
    "replies": len(lines),
    "last": lines[-1].decode() if lines else None,
    "endedBy": ended_by,
    "sendError": send_error,
}), flush=True)
