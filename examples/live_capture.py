"""Capture live packets that match a pcap-filter expression (Linux; needs root or CAP_NET_RAW).

    sudo python examples/live_capture.py                      # lo, sends itself a few datagrams
    sudo python examples/live_capture.py -i eth0 -f "tcp port 443" -c 20 -t 10
    sudo python examples/live_capture.py --user-space         # filter with the JIT instead of the kernel

On lo (and any) the script sends its own UDP datagrams to 127.0.0.1, so it finishes at once; on other
interfaces it waits for traffic, at most --timeout seconds.
"""

from __future__ import annotations

import argparse
import socket
import sys

from bpfjit.capture import Capture

PORT = 50999


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--interface", default="lo")
    parser.add_argument("-f", "--filter", default=f"udp dst port {PORT}", help="pcap-filter expression")
    parser.add_argument("-c", "--count", type=int, default=5, help="stop after this many packets")
    parser.add_argument("-t", "--timeout", type=float, default=3.0, help="stop after this many seconds")
    parser.add_argument("--user-space", action="store_true", help="filter ring blocks with the JIT, not in the kernel")
    args = parser.parse_args()

    try:
        cap = Capture(args.interface, args.filter, in_kernel=not args.user_space)
    except PermissionError as exc:
        print(exc, file=sys.stderr)
        return 1
    with cap:  # closes the socket and unmaps the ring, also on Ctrl-C
        where = "in the kernel (SO_ATTACH_FILTER)" if cap.in_kernel else "by the JIT, a ring block per call"
        print(f"capturing on {cap.interface} ({cap.linktype}), {args.filter!r} filtered {where}")
        if args.interface in ("lo", "any"):
            # The ring buffers what arrives from now on, so sending before reading loses nothing.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for i in range(args.count):
                    sock.sendto(b"bpfjit %d" % i, ("127.0.0.1", PORT))
                    sock.sendto(b"not this one", ("127.0.0.1", PORT + 1))  # the filter drops these
        n = 0
        for timestamp, packet, wirelen in cap.packets(count=args.count, timeout=args.timeout):
            n += 1
            # `packet` is a bytes copy taken out of the ring: keep it as long as you like.
            print(f"{timestamp:.6f}  {wirelen:5d} bytes  {packet[:24].hex(' ')} ...")
        stats = cap.stats()
    print(f"{n} packets; the socket received {stats.received}, dropped {stats.dropped} (ring full)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
