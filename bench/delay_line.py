"""A delay line between two network namespaces for bench/compare: every IP packet waits a fixed time.

The kernel here has no netem (CONFIG_NET_SCH_NETEM is not set), so a TUN device in each namespace is
joined by a thread that holds every packet `one_way_s` before writing it out of the other device. It
delays whole IP packets, so TCP's own handshake pays the delay too, as it would on a real path.

Each forwarded packet is logged with the one-way trip ("leg") it belongs to, counted causally: a
packet read from one side is on the leg after the last one delivered to that side (the client's
first packets are on leg 1). With a delay far above CPU time that is the number of one-way trips on
the path that led to it, independent of process start-up and CPU time.
"""
import fcntl
import os
import select
import struct
import subprocess
import threading
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


class DelayLine:
    CLIENT_ADDRESS = "10.77.0.1"
    SERVER_ADDRESS = "10.77.0.2"

    def __init__(self, client_netns, server_netns, one_way_s, tag):
        """Creates TUN devices in both namespaces (both must exist) and starts forwarding."""
        self.one_way_s = one_way_s
        self.lock = threading.Lock()
        self.log = []           # (forwarded_at, to_client, ip_bytes, leg, arrived_at)
        self.stopping = False
        self.fds = {}
        devices = {"client": f"tc{tag}"[:15], "server": f"ts{tag}"[:15]}
        try:
            for side, netns, me, peer in (("client", client_netns, self.CLIENT_ADDRESS, self.SERVER_ADDRESS),
                                          ("server", server_netns, self.SERVER_ADDRESS, self.CLIENT_ADDRESS)):
                name = devices[side]
                fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
                self.fds[side] = fd
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
                # The open descriptor keeps working after the device moves to its namespace.
                run(["ip", "link", "set", name, "netns", netns])
                run(["ip", "-n", netns, "link", "set", name, "up", "mtu", "1500"])
                run(["ip", "-n", netns, "addr", "add", f"{me}/32", "dev", name])
                run(["ip", "-n", netns, "route", "add", f"{peer}/32", "dev", name])
        except BaseException:
            self.close()
            raise
        self.thread = threading.Thread(target=self._run, name="delay-line", daemon=True)
        self.thread.start()

    def _run(self):
        client, server = self.fds["client"], self.fds["server"]
        queues = {True: [], False: []}     # to_client -> [(due, packet, leg, arrived)], in arrival order
        delivered_leg = {True: 0, False: 0}
        while not self.stopping:
            now = time.monotonic()
            for to_client, queue in queues.items():
                while queue and queue[0][0] <= now:
                    _, packet, leg, arrived = queue.pop(0)
                    try:
                        os.write(client if to_client else server, packet)
                    except OSError:
                        continue
                    delivered_leg[to_client] = max(delivered_leg[to_client], leg)
                    with self.lock:
                        self.log.append((now, to_client, len(packet), leg, arrived))
            dues = [q[0][0] for q in queues.values() if q]
            timeout = max(0.0, min(dues) - now) if dues else 0.02
            try:
                ready, _, _ = select.select([client, server], [], [], min(timeout, 0.02))
            except (OSError, ValueError):
                return
            arrived = time.monotonic()
            for fd in ready:
                to_client = fd == server
                while True:
                    try:
                        packet = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    except OSError:
                        return
                    # A packet from the client answers what was last delivered to the client, and so on.
                    leg = delivered_leg[not to_client] + 1
                    queues[to_client].append((arrived + self.one_way_s, packet, leg, arrived))

    def summary(self, since, until):
        """Packets and IP bytes each way that reached the line from time `since` (time.monotonic()) on and
        were forwarded by `until`, and the one-way trips from the client's first such packet to the last
        packet delivered to the client by `until`. Packets of an earlier connection still in flight at
        `since` are left out."""
        with self.lock:
            entries = [e for e in self.log if e[4] >= since and e[0] <= until]
        out = {"packets_to_server": 0, "bytes_to_server": 0, "packets_to_client": 0, "bytes_to_client": 0}
        for _, to_client, size, _, _ in entries:
            side = "client" if to_client else "server"
            out[f"packets_to_{side}"] += 1
            out[f"bytes_to_{side}"] += size
        first = next((e for e in entries if not e[1]), None)
        last = next((e for e in reversed(entries) if e[1]), None)
        out["network_rtts"] = (last[3] - first[3] + 1) / 2 if first and last else None
        return out

    def close(self):
        self.stopping = True
        thread = getattr(self, "thread", None)
        if thread is not None:
            thread.join(timeout=2)
        # Closing the descriptors removes the devices (and their addresses and routes).
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = {}


def run(argv):
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(f"{' '.join(argv)}: {done.stderr.strip()}")
