"""Fanout (`bpfjit.fanout`) against the kernel, in a throwaway namespace with a veth pair (tx0 -> rx0).

Frames are injected on tx0 with a packet socket: a group on rx0 sees them received, a group on tx0
sees them sent. Each frame ends with a unique id, so which member got which frame, and how often, is
read off the captured bytes. The kernel is the oracle for the rebased fanout programs: the member it
picks must be the one the reference interpreter computes from the frame as a socket filter sees it.
Without root the live tests skip (fail under CI=true); the program-building ones always run.
"""

from __future__ import annotations

import collections
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from netns import inside
from test_linux_kernel import LL_OFF, NET_OFF, Pair, veth_pair

from bpfjit import Insn, Program, interpret
from bpfjit.fanout import FanoutCapture, WorkerPacket, rebase, steering_program
from bpfjit.libpcap import compile_for_interface
from bpfjit.linux import Meta
from bpfjit.samples import arp_request, ethernet, ipv4, tcp, udp

MARK = b"FO"
SRC = b"\x02\x00\x00\x00\x00\x01"


@pytest.fixture
def pair() -> Iterator[Pair]:
    with veth_pair() as made, inside(made.namespace):
        yield made


# -- frames ------------------------------------------------------------------------------------------
def tagged(frame: bytes, ident: int) -> bytes:
    return frame + MARK + struct.pack("!I", ident)


def ident_of(packet: bytes) -> int:
    assert packet[-6:-4] == MARK, packet.hex()
    return int(struct.unpack("!I", packet[-4:])[0])


def flow_frame(dst: bytes, flow: int, ident: int) -> bytes:
    """Flow `flow` of a mix of TCP and UDP flows (distinct addresses and ports), packet `ident`."""
    src, dst_ip = f"10.0.{flow // 200}.{flow % 200 + 1}", "10.9.0.1"
    l4 = tcp(20000 + flow, 80, 0x10) if flow % 2 else udp(30000 + flow, 53)
    return tagged(ethernet(0x0800, ipv4(6 if flow % 2 else 17, l4, src, dst_ip), dst=dst, src=SRC), ident)


def mix(dst: bytes) -> list[bytes]:
    """Kinds for steering: TCP (SYN and not), UDP (53 and not), ICMP, ARP, IP with options, IPv6, short."""
    ip_options = ipv4(6, tcp(1234, 80, 0x02), options=b"\x01\x01\x01\x00")
    kinds = [
        ethernet(0x0800, ipv4(6, tcp(40000, 80, 0x02)), dst=dst, src=SRC),
        ethernet(0x0800, ipv4(6, tcp(40001, 8080, 0x10, b"x" * 300)), dst=dst, src=SRC),
        ethernet(0x0800, ipv4(17, udp(5353, 53, b"q" * 20)), dst=dst, src=SRC),
        ethernet(0x0800, ipv4(17, udp(5000, 9, b"z" * 600)), dst=dst, src=SRC),
        ethernet(0x0800, ipv4(1, b"\x08\x00" + bytes(6)), dst=dst, src=SRC),
        ethernet(0x0806, arp_request()[14:], dst=dst, src=SRC),
        ethernet(0x0800, ip_options, dst=dst, src=b"\x02\x00\x00\x00\x00\x07"),
        ethernet(0x86DD, bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + bytes(32) + udp(1, 53), dst=dst, src=SRC),
        ethernet(0x0800, ipv4(6, tcp(7, 7, 0x12)), dst=dst, src=SRC),
    ]
    return [tagged(frame, i) for i, frame in enumerate(kinds)]


def send(device: str, frames: list[bytes], pace: int = 100) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        sock.bind((device, 0))
        for n, frame in enumerate(frames):
            sock.send(frame)
            if n % pace == pace - 1:
                time.sleep(0.002)  # a low rate: no ring or backlog is ever full


def gather(group: FanoutCapture, expected: int, settle: float = 0.3) -> list[WorkerPacket]:
    got = list(group.packets(count=expected, timeout=5))
    return got + list(group.packets(timeout=settle))


def by_ident(got: list[WorkerPacket]) -> dict[int, list[int]]:
    """ident -> the workers that delivered it (one each, if all is well)."""
    seen: dict[int, list[int]] = collections.defaultdict(list)
    for record in got:
        seen[ident_of(record.packet)].append(record.worker)
    return seen


# -- modes -------------------------------------------------------------------------------------------
def test_hash_delivers_every_packet_once_and_keeps_flows_together(pair: Pair) -> None:
    flows, per_flow = 64, 8
    frames = [flow_frame(pair.rx_mac, f, f * per_flow + n) for n in range(per_flow) for f in range(flows)]
    with FanoutCapture("rx0", 3, "hash", block_timeout=0.01) as group:
        assert len(group.workers) == 3 and group.group_id is not None
        send("tx0", frames)
        got = gather(group, len(frames))
        stats = group.stats()
    seen = by_ident(got)
    assert sorted(seen) == list(range(len(frames)))
    assert all(len(workers) == 1 for workers in seen.values()), "a packet delivered twice"
    flow_workers = {f: {seen[f * per_flow + n][0] for n in range(per_flow)} for f in range(flows)}
    assert all(len(workers) == 1 for workers in flow_workers.values()), "a flow split across workers"
    assert {w for (w,) in flow_workers.values()} == {0, 1, 2}
    assert stats.total.received == len(frames) and stats.total.dropped == 0
    assert [s.received for s in stats.workers] == [sum(1 for r in got if r.worker == w) for w in range(3)]


def test_lb_balances_round_robin(pair: Pair) -> None:
    frames = [flow_frame(pair.rx_mac, 0, n) for n in range(400)]  # one flow: hash would put it on one worker
    with FanoutCapture("rx0", 4, "lb", block_timeout=0.01) as group:
        send("tx0", frames)
        got = gather(group, len(frames))
    seen = by_ident(got)
    assert sorted(seen) == list(range(400)) and all(len(w) == 1 for w in seen.values())
    counts = collections.Counter(r.worker for r in got)
    assert sorted(counts) == [0, 1, 2, 3] and max(counts.values()) - min(counts.values()) <= 2, counts


def test_cpu_mode_follows_the_receiving_cpu(pair: Pair) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    original = os.sched_getaffinity(0)
    with FanoutCapture("rx0", 2, "cpu", block_timeout=0.01) as group:
        try:
            for cpu in cpus:  # veth receives on the sender's CPU (no RPS in a fresh namespace)
                os.sched_setaffinity(0, {cpu})
                frames = [flow_frame(pair.rx_mac, f, 1000 * cpu + f) for f in range(20)]
                send("tx0", frames)
                os.sched_setaffinity(0, original)
                got = gather(group, len(frames))
                assert sorted(by_ident(got)) == [1000 * cpu + f for f in range(20)]
                assert {r.worker for r in got} == {cpu % 2}
        finally:
            os.sched_setaffinity(0, original)


def test_rollover_keeps_to_the_first_socket_until_it_is_full(pair: Pair) -> None:
    frames = [flow_frame(pair.rx_mac, f, f) for f in range(50)]
    with FanoutCapture("rx0", 3, "rollover", block_timeout=0.01) as group:
        send("tx0", frames)
        got = gather(group, len(frames))
    assert sorted(by_ident(got)) == list(range(50))
    assert {r.worker for r in got} == {0}


# -- steering by expressions -------------------------------------------------------------------------
PORTS = " or ".join(str(p) for p in [*range(1000, 1200), 80])  # jumps past 255 insns: trampolines


@pytest.mark.parametrize(
    "steer, workers",
    [
        (["tcp", "udp"], 3),  # the last worker gets the rest
        (["tcp", "udp", "arp"], 3),  # as many as workers: the rest is dropped
        (["tcp[tcpflags] & tcp-syn != 0", "udp port 53", "ether src 02:00:00:00:00:07", "len > 400", "ip6"], 6),
        ([f"tcp dst port ({PORTS})", "ip[ip[0:1] & 0xf:1] = 0 or icmp", "ip proto 17 and udp[8:1] = 0x7a"], 4),
    ],
    ids=["tcp-udp-rest", "tcp-udp-arp", "five", "long"],
)
@pytest.mark.parametrize("direction", ["received", "sent"])
def test_each_worker_gets_what_its_expression_matches_first(pair: Pair, steer: list[str], workers: int,
                                                            direction: str) -> None:  # fmt: skip
    device = "rx0" if direction == "received" else "tx0"
    frames = mix(pair.rx_mac) * 3
    frames = [frame[:-4] + struct.pack("!I", n) for n, frame in enumerate(frames)]
    programs = [compile_for_interface(expression, device, "EN10MB") for expression in steer]
    meta = Meta(pkttype=0 if direction == "received" else 4, ifindex=socket.if_nametoindex(device))

    def expected(frame: bytes) -> int | None:
        for index, program in enumerate(programs):
            if interpret(program, frame, dialect="linux", meta=meta):
                return index
        return workers - 1 if len(steer) < workers else None

    with FanoutCapture(device, workers, "cbpf", steer=steer, block_timeout=0.01) as group:
        assert group.steering is not None
        send("tx0", frames)
        got = gather(group, len(frames))
    seen = by_ident(got)
    assert all(len(w) == 1 for w in seen.values())
    want = {n: expected(frame) for n, frame in enumerate(frames)}
    assert {n: w[0] for n, w in seen.items()} == {n: w for n, w in want.items() if w is not None}
    assert len(set(want.values()) - {None}) >= min(workers, 3)  # the mix really spreads


# -- rebased loads, one by one -----------------------------------------------------------------------
CHUNK_WORKERS = 17  # a result of 1-16 is 4 bits of A; 0 (a failed load) is worker 0


def chunked(load: list[Insn], shift: int) -> Program:
    """`load` (leaving a value in A), then A <- ((A >> shift) & 15) + 1; ret a."""
    return Program([*load, Insn(0x74, 0, 0, shift), Insn(0x54, 0, 0, 15), Insn(0x04, 0, 0, 1), Insn(0x16, 0, 0, 0)])


LOADS: dict[str, tuple[list[Insn], int]] = {  # name: (instructions, bits of the value to read)
    **{f"ldb [{k}]": ([Insn(0x30, 0, 0, k)], 8) for k in (0, 5, 6, 12, 14, 23, 33, 61, 62, 2000)},
    "ldh [12]": ([Insn(0x28, 0, 0, 12)], 16),
    "ld [26]": ([Insn(0x20, 0, 0, 26)], 32),
    "ld [59]": ([Insn(0x20, 0, 0, 59)], 8),  # the last 4 bytes or past the end, by frame
    "ldxb 4*([14]&0xf); ldb [x+14]": ([Insn(0xB1, 0, 0, 14), Insn(0x50, 0, 0, 14)], 8),
    "ldxb 4*([14]&0xf); ldh [x+16]": ([Insn(0xB1, 0, 0, 14), Insn(0x48, 0, 0, 16)], 16),
    "ldx #NET_OFF+9; ldb [x+0]": ([Insn(0x01, 0, 0, NET_OFF + 9), Insn(0x50, 0, 0, 0)], 8),
    "ldx #LL_OFF; ldh [x+12]": ([Insn(0x01, 0, 0, LL_OFF), Insn(0x48, 0, 0, 12)], 16),
    "ldx #0xffffffff; ldb [x+13]": ([Insn(0x01, 0, 0, 0xFFFFFFFF), Insn(0x50, 0, 0, 13)], 8),  # wraps to 12
    "ldx #0x100000; ldb [x+0]": ([Insn(0x01, 0, 0, 0x100000), Insn(0x50, 0, 0, 0)], 8),  # past 1 MiB: fails
    "ldx #0xfffff000; ldb [x+0]": ([Insn(0x01, 0, 0, 0xFFFFF000), Insn(0x50, 0, 0, 0)], 8),  # not ancillary
    "ldb [LL_OFF+6]": ([Insn(0x30, 0, 0, LL_OFF + 6)], 8),
    "ldb [NET_OFF+0]": ([Insn(0x30, 0, 0, NET_OFF)], 8),
    "ld len": ([Insn(0x80, 0, 0, 0)], 12),
    "ldx len; txa": ([Insn(0x81, 0, 0, 0), Insn(0x87, 0, 0, 0)], 12),
    "ld [type]": ([Insn(0x20, 0, 0, 0xFFFFF004)], 4),
}


@pytest.mark.parametrize("direction", ["received", "sent"])
def test_rebased_loads_read_what_the_socket_filter_reads(pair: Pair, direction: str) -> None:
    device = "rx0" if direction == "received" else "tx0"
    frames = mix(pair.rx_mac)
    meta = Meta(pkttype=0 if direction == "received" else 4, ifindex=socket.if_nametoindex(device))
    failures = []
    with FanoutCapture(device, CHUNK_WORKERS, "cbpf", steer=Program([Insn(0x06, 0, 0, 0)]),
                       block_timeout=0.01, buffer_size=1 << 18) as group:  # fmt: skip
        list(group.packets(timeout=0.1))
        for name, (load, bits) in LOADS.items():
            for shift in range(0, bits, 4):
                program = chunked(load, shift)
                group.set_steering(rebase(program, dialect="linux"))
                send("tx0", frames)
                got = {ident_of(r.packet): r.worker for r in gather(group, len(frames), settle=0.05)}
                want = {n: interpret(program, frame, dialect="linux", meta=meta) % CHUNK_WORKERS
                        for n, frame in enumerate(frames)}  # fmt: skip
                if got != want:
                    failures.append(f"{name} >> {shift}: kernel {got}, interpreter {want}")
    assert not failures, "\n".join(failures)


# -- closing, statistics, processes ------------------------------------------------------------------
def test_close_from_another_thread_stops_every_worker(pair: Pair) -> None:
    group = FanoutCapture("rx0", 3, "hash")
    threading.Timer(0.3, group.close).start()
    started = time.monotonic()
    assert list(group.packets()) == []
    assert time.monotonic() - started < 2
    assert group.closed and all(capture.closed for capture in group.workers)
    group2 = FanoutCapture("rx0", 3, "lb")
    threading.Timer(0.3, group2.close).start()
    calls: list[int] = []
    group2.run(lambda worker, record: calls.append(worker))
    assert not [t for t in threading.enumerate() if t.name.startswith("bpfjit-fanout-")]


def test_a_handler_error_stops_the_workers_and_is_raised(pair: Pair) -> None:
    def handler(worker: int, record: object) -> None:
        raise RuntimeError(f"worker {worker}")

    with FanoutCapture("rx0", 2, "lb", block_timeout=0.01) as group:
        threading.Timer(0.2, send, ("tx0", [flow_frame(pair.rx_mac, 0, 1)])).start()
        with pytest.raises(RuntimeError, match="worker"):
            group.run(handler, timeout=5)


def test_packets_taken_but_not_yielded_come_next(pair: Pair) -> None:
    frames = [flow_frame(pair.rx_mac, f, f) for f in range(60)]
    with FanoutCapture("rx0", 2, "lb", block_timeout=0.01) as group:
        send("tx0", frames)
        time.sleep(0.2)
        first = list(group.packets(count=7, timeout=3))
        rest = gather(group, 53)
    assert len(first) == 7
    assert sorted(ident_of(r.packet) for r in first + rest) == list(range(60))


CHILD = """
import sys, time
from bpfjit.fanout import join
with join("rx0", int(sys.argv[1]), mode="lb", block_timeout=0.01) as cap:
    print("ready", flush=True)
    got = [r.packet[-4:].hex() for r in cap.packets(timeout=float(sys.argv[2]))]
print(" ".join(got))
"""


def test_processes_share_a_group_by_id(pair: Pair) -> None:
    group_id = 40000 + os.getpid() % 20000
    frames = [flow_frame(pair.rx_mac, 0, n) for n in range(100)]
    with FanoutCapture("rx0", 1, "lb", group_id=group_id, block_timeout=0.01) as group:
        assert group.group_id == group_id
        child = subprocess.Popen(["ip", "netns", "exec", pair.namespace, sys.executable, "-c", CHILD, str(group_id),
                                  "3"], stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        send("tx0", frames)
        mine = gather(group, 50)
        theirs = [int(word, 16) for word in child.communicate(timeout=20)[0].split()]
    assert child.returncode == 0
    assert sorted([ident_of(r.packet) for r in mine] + theirs) == list(range(100))
    assert len(theirs) == 50, len(theirs)


# -- without the kernel ------------------------------------------------------------------------------
def test_rebase_moves_link_loads_and_keeps_negative_ones() -> None:
    program = Program([Insn(0x28, 0, 0, 12), Insn(0x30, 0, 0, NET_OFF + 9), Insn(0x30, 0, 0, 0x100000),
                       Insn(0x16, 0, 0, 0)])  # fmt: skip
    rebased = rebase(program, dialect="linux")
    assert [insn.k for insn in rebased][:2] == [(LL_OFF + 12) & 0xFFFFFFFF, NET_OFF + 9]
    assert rebased[2] == Insn(0x05, 0, 0, 1) and rebased[4] == Insn(0x06, 0, 0, 0)  # past 1 MiB: fails
    assert rebase(program, linktype="RAW", dialect="linux") == program
    cooked = rebase(Program([Insn(0x28, 0, 0, 16 + 9), Insn(0x06, 0, 0, 1000)]), cooked=True, dialect="linux")
    assert cooked[0].k == (NET_OFF + 9) & 0xFFFFFFFF


def test_rebase_refuses_what_it_cannot_express() -> None:
    with pytest.raises(ValueError, match="header length"):
        rebase(Program([Insn(0x80, 0, 0, 0), Insn(0x16, 0, 0, 0)]), linktype="IEEE802_11")
    with pytest.raises(ValueError, match="cannot run in the kernel"):
        rebase(Program([Insn(0x30, 0, 0, NET_OFF), Insn(0x16, 0, 0, 0)]))  # pcap dialect: out of bounds


def test_far_jumps_go_through_trampolines() -> None:
    ports = " or ".join(map(str, range(1000, 1400)))
    steering = steering_program([Program.from_expr(f"tcp dst port ({ports})", "EN10MB"),
                                 Program.from_expr("udp", "EN10MB")], 3)  # fmt: skip
    assert len(steering) > 560
    meta = Meta(net_offset=14)  # the interpreter's SKF_LL_OFF is the packet's start: a frame from its MAC header
    for frame, worker in [(ethernet(0x0800, ipv4(6, tcp(1, 1399))), 0), (ethernet(0x0800, ipv4(6, tcp(1, 999))), 2),
                          (ethernet(0x0800, ipv4(17, udp(1, 2))), 1), (ethernet(0x0806, arp_request()[14:]), 2)]:
        assert interpret(steering, frame, dialect="linux", meta=meta) == worker


@pytest.mark.parametrize("a, result", [(0, 1), (5, 0)])
def test_a_conditional_jump_pushed_past_255_insns_by_rebasing(a: int, result: int) -> None:
    loads = [Insn(0x50, 0, 0, 0)] * 250  # ldb [x+0]: six instructions each once rebased
    program = Program([Insn(0x00, 0, 0, a), Insn(0x15, 251, 0, 0), *loads, Insn(0x06, 0, 0, 0), Insn(0x06, 0, 0, 1)])
    rebased = rebase(program, dialect="linux")
    assert len(rebased) > 250 * 6 and rebased[1].jt == 0 and rebased[2].code == 0x05  # jeq -> ja -> far target
    assert interpret(rebased, ethernet(0x0800, bytes(40)), dialect="linux") == result


def test_group_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="workers"):
        FanoutCapture("lo", 0)
    with pytest.raises(ValueError, match="mode"):
        FanoutCapture("lo", 2, "fast")
    with pytest.raises(ValueError, match="steer"):
        FanoutCapture("lo", 2, "hash", steer=["tcp"])
    with pytest.raises(ValueError, match="steer"):
        FanoutCapture("lo", 2, "cbpf")
    with pytest.raises(ValueError, match="steering filters"):
        steering_program([Program([Insn(0x06, 0, 0, 1)])] * 3, 2)
