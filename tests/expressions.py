"""pcap-filter expressions shared by tests that compare bpfjit with libpcap."""

from __future__ import annotations

# pcap-filter expressions that compile for Ethernet and pass bpfjit's validator (so no `protochain`,
# whose loop is a backward jump); they cover every load mode, ALU op and jump kind tcpdump emits.
EXPRESSIONS = (
    "",
    "ip",
    "ip6",
    "arp",
    "tcp port 80",
    "udp port 53 or udp port 123",
    "tcp[tcpflags] & tcp-syn != 0",
    "host 192.168.1.1",
    "src net 10.0.0.0/8 and dst port 443",
    "portrange 1000-2000",
    "icmp or icmp6",
    "vlan and ip",
    "ether host 00:11:22:33:44:55 or ether broadcast",
    "ip multicast",
    "ip6 and tcp port 80",
    "less 100",
    "greater 1000",
    "ip[2:2] - ((ip[0] & 0xf) << 2) > 100",
    "tcp[((tcp[12] & 0xf0) >> 2):4] = 0x47455420",
    "ip[1] * 3 / 2 % 5 = 1",
    "ip[0] << (ip[1] & 7) = 0x80 or ip[2] >> (ip[3] & 7) = 1",
    "(ip[6:2] & 0x1fff) = 0 and not udp[8:2] = 0x1234",
    "ip[8] ^ 0xff = 0xc0 or -ip[9] = 0xfffffffa",
    "len >= 60 and len <= 1500 and ether proto 0x88cc",
    "pppoes and ip",
    "mpls and ip",
)
