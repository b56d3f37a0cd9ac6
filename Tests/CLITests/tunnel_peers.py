"""TCP services and clients for the tunnel tests (TunnelTests.swift), on 127.0.0.1.

Services print their port on the first line of stdout, then serve until killed.
Clients print one result line and exit 0, or print what went wrong and exit 1.
"""
import hashlib
import socket
import struct
import sys
import time


def listen():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 0))
    server.listen(64)
    print(server.getsockname()[1], flush=True)
    return server


def read_to_eof(connection):
    chunks = []
    while True:
        chunk = connection.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def answer(digest):
    # Large enough to need many segments and several windows.
    return digest * 40_000


def serve_after_eof():
    """Reads the whole request (to the client's FIN), then answers and closes."""
    server = listen()
    while True:
        connection, _ = server.accept()
        request = read_to_eof(connection)
        connection.sendall(answer(hashlib.sha256(request).hexdigest().encode()))
        connection.close()


def serve_banner_first():
    """Sends a greeting and half-closes at once, then reads the client's data to its FIN and
    reports its digest on stdout."""
    server = listen()
    while True:
        connection, _ = server.accept()
        connection.sendall(b"hello, then FIN\n")
        connection.shutdown(socket.SHUT_WR)
        data = read_to_eof(connection)
        print("received", len(data), hashlib.sha256(data).hexdigest(), flush=True)
        connection.close()


def serve_stream():
    """Writes until the connection fails, then reports how it failed on stdout."""
    server = listen()
    block = b"x" * 65536
    while True:
        connection, _ = server.accept()
        try:
            while True:
                connection.sendall(block)
        except OSError as error:
            print("write failed:", error.__class__.__name__, flush=True)
        connection.close()


def serve_reset():
    """Reads the first bytes of each connection, then resets it (SO_LINGER 0)."""
    server = listen()
    while True:
        connection, _ = server.accept()
        connection.recv(65536)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()


FLOOD_LIMIT = 1 << 30


def flood(connection):
    """Writes until a write stays blocked for 2 s (the far reader's backpressure reached us) or
    FLOOD_LIMIT bytes went out; returns the line to print."""
    connection.settimeout(2)
    block = b"y" * 65536
    sent = 0
    while sent < FLOOD_LIMIT:
        try:
            sent += connection.send(block)
        except socket.timeout:
            return f"blocked after {sent}"
    return f"never blocked: {sent}"


def serve_flood():
    """Writes to each connection until blocked (the client reads nothing), reports, holds it open."""
    server = listen()
    held = []
    while True:
        connection, _ = server.accept()
        print(flood(connection), flush=True)
        held.append(connection)


def serve_idle():
    """Accepts and never reads."""
    server = listen()
    held = []
    while True:
        connection, _ = server.accept()
        held.append(connection)


def client_flood(port):
    connection = socket.create_connection(("127.0.0.1", port))
    print(flood(connection), flush=True)


def client_hold(port):
    """Connects and neither reads nor writes until killed."""
    connection = socket.create_connection(("127.0.0.1", port))
    print("connected", flush=True)
    time.sleep(3600)


def client_half_close(port, size):
    request = (bytes(range(256)) * (size // 256 + 1))[:size]
    connection = socket.create_connection(("127.0.0.1", port))
    connection.sendall(request)
    connection.shutdown(socket.SHUT_WR)
    reply = read_to_eof(connection)
    expected = answer(hashlib.sha256(request).hexdigest().encode())
    if reply != expected:
        print(f"wrong answer: {len(reply)} bytes, expected {len(expected)}")
        sys.exit(1)
    print("answer intact", len(reply))


def client_after_banner(port, size):
    connection = socket.create_connection(("127.0.0.1", port))
    banner = read_to_eof(connection)
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    connection.sendall(data)
    connection.shutdown(socket.SHUT_WR)
    # The service closes once it has read everything: wait for that.
    read_to_eof(connection)
    print("banner", banner.decode().strip(), "sent", len(data), hashlib.sha256(data).hexdigest())


def client_until_closed(port):
    """Connects, sends a line and reports how long until the connection was closed."""
    start = time.monotonic()
    connection = socket.create_connection(("127.0.0.1", port))
    connection.settimeout(30)
    try:
        connection.sendall(b"PING\r\n")
        data = connection.recv(65536)
        how = "eof" if not data else f"data {data!r}"
    except socket.timeout:
        print("still open after 30 s")
        sys.exit(1)
    except OSError as error:
        how = error.__class__.__name__
    print(f"closed ({how}) after {time.monotonic() - start:.3f} s")


def client_reset(port):
    """Reads some of the stream, then closes with SO_LINGER 0 (a TCP RST)."""
    connection = socket.create_connection(("127.0.0.1", port))
    received = 0
    while received < 1_000_000:
        chunk = connection.recv(65536)
        if not chunk:
            print("stream ended early")
            sys.exit(1)
        received += len(chunk)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()
    print("reset after", received)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve-after-eof":
        serve_after_eof()
    elif mode == "serve-banner-first":
        serve_banner_first()
    elif mode == "serve-stream":
        serve_stream()
    elif mode == "serve-reset":
        serve_reset()
    elif mode == "serve-flood":
        serve_flood()
    elif mode == "serve-idle":
        serve_idle()
    elif mode == "flood":
        client_flood(int(sys.argv[2]))
    elif mode == "hold":
        client_hold(int(sys.argv[2]))
    elif mode == "half-close":
        client_half_close(int(sys.argv[2]), int(sys.argv[3]))
    elif mode == "after-banner":
        client_after_banner(int(sys.argv[2]), int(sys.argv[3]))
    elif mode == "until-closed":
        client_until_closed(int(sys.argv[2]))
    elif mode == "reset":
        client_reset(int(sys.argv[2]))
    else:
        sys.exit(f"unknown mode {mode}")
