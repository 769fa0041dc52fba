#!/usr/bin/env python3
"""Attack helpers for the privileged tests (attacks.rs, listeners.rs, source_routes.rs,
socket_layer.rs, raw_sockets.rs; stdlib only).

Clients print exactly one line first: `ok`, `timeout`, or `error <errno> <message>`,
like enforcer-probe. Servers print `listening <addr>` once bound.

Modes:
  udp-sink ADDR PORT FILE [v6only] [udplite]
                                        bind, announce, append "<src-ip> <src-port>" to
                                        FILE for every datagram, echo it back (best effort)
  udp-fire DST DPORT [broadcast] [udplite]
                                        sendto from an ephemeral port, no answer awaited
  (udplite: a UDP-Lite socket, IPPROTO_UDPLITE, instead of UDP)
  bind-close tcp|udp ADDR PORT [v6only] bind and close (nothing else)
  udp-query-gated DST DPORT GATE         bind(0) (a port of the ephemeral range), create
                                        GATE/ready, wait for GATE/go, then send one
                                        datagram and await its echo (2 s)
  sockopt ADDR LEVEL NAME VALUE         setsockopt(LEVEL, NAME, int VALUE) on a UDP socket
                                        of ADDR's family
  udp-ssrr DST DPORT VIA                sendmsg to DST:DPORT with a strict source route
                                        through VIA as ancillary data (IP_RETOPTS)
  tcp-lsrr-gated DST DPORT VIA GATE     TCP socket with a loose source route through VIA
                                        (IP_OPTIONS), create GATE/ready, wait for GATE/go,
                                        then connect (2 s)
  raw-ping DST                          an ICMP echo request to DST from a raw socket
                                        (SOCK_RAW, IPPROTO_ICMP), its reply awaited (2 s)
  udp6-chain SRC DST DPORT COUNT [cut]
                                        an IPv6 UDP datagram SRC -> DST:DPORT behind COUNT
                                        destination-options headers, built whole on a raw
                                        socket (IPPROTO_RAW); `cut`: the last header names
                                        one more and the packet ends there (no UDP)
  tcp-echo ADDR PORT                    bind, announce, echo every connection's bytes until
                                        it closes (one connection at a time)
  chat tcp|udp DST DPORT COUNT          one connected socket (TCP connect, or UDP
                                        connect) exchanging COUNT messages with an echo
                                        server, each answer awaited (2 s)
  handshake-gated SRC DST DPORT SPORT GATE
                                        an IPv4 TCP handshake by hand on a raw socket
                                        (IPPROTO_TCP): a SYN SRC:SPORT -> DST:DPORT, the
                                        SYN-ACK awaited (2 s; its sequence number is the
                                        listener's SYN cookie), GATE/ready, wait for
                                        GATE/go, then the ACK that completes the handshake
                                        (`ok` once it is sent)
  forge-syn raw-ip|packet-raw|packet-dgram SRC DST DPORT SPORT [nobody]
                                        a SYN SRC:SPORT -> DST:DPORT that no TCP socket
                                        sent, built whole on a raw IP socket (IPv4 only:
                                        SOCK_RAW, IPPROTO_TCP, IP_HDRINCL) or put on `lo`
                                        by a packet socket (AF_PACKET, SOCK_RAW with its
                                        Ethernet header, or SOCK_DGRAM; IPv4, or IPv6 when
                                        SRC is); `ok` when the listener's SYN-ACK is seen
                                        (2 s; on the raw socket when SRC is local, on `lo`
                                        for a packet socket), `timeout` when it is not, or
                                        the error of `socket()`; `nobody`: as uid/gid
                                        65534, without capabilities
  forge-udp SRC DST DPORT SPORT         one datagram SRC:SPORT -> DST:DPORT that no UDP
                                        socket sent, put on `lo` by a packet socket
                                        (AF_PACKET, SOCK_DGRAM; IPv4 or IPv6); `ok` once
                                        sent
"""
import os
import socket
import struct
import sys
import time


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def fail(err):
    if isinstance(err, socket.timeout):
        out("timeout")
        sys.exit(1)
    out("error %d %s" % (err.errno or 0, err.strerror or str(err)))
    sys.exit(1)


def family_of(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


IPPROTO_UDPLITE = 136


def datagram_socket(family, udplite):
    return socket.socket(family, socket.SOCK_DGRAM, IPPROTO_UDPLITE if udplite else 0)


def udp_sink(addr, port, path, v6only=False, udplite=False):
    s = datagram_socket(family_of(addr), udplite)
    if v6only:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, int(port)))
    bound = s.getsockname()
    out("listening %s" % (("[%s]:%d" if ":" in bound[0] else "%s:%d") % (bound[0], bound[1])))
    while True:
        data, src = s.recvfrom(2048)
        with open(path, "a") as f:
            f.write("%s %d\n" % (src[0], src[1]))
        try:
            s.sendto(data, src)
        except OSError:
            pass


def udp_fire(dst, dport, broadcast=False, udplite=False):
    try:
        s = datagram_socket(family_of(dst), udplite)
        if broadcast:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.sendto(b"ping\n", (dst, int(dport)))
        out("ok")
    except OSError as err:
        fail(err)


def bind_close(proto, addr, port, v6only=False):
    try:
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(family_of(addr), kind)
        if v6only:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, int(port)))
        s.close()
        out("ok")
    except OSError as err:
        fail(err)


def udp_query_gated(dst, dport, gate):
    try:
        s = socket.socket(family_of(dst), socket.SOCK_DGRAM)
        s.bind(("::" if ":" in dst else "0.0.0.0", 0))
        wait_for_gate(gate)
        s.settimeout(2)
        s.sendto(b"ping\n", (dst, int(dport)))
        s.recvfrom(2048)
        out("ok")
    except OSError as err:
        fail(err)


def wait_for_gate(gate):
    open(os.path.join(gate, "ready"), "w").close()
    deadline = time.monotonic() + 10
    while not os.path.exists(os.path.join(gate, "go")):
        if time.monotonic() > deadline:
            out("error 0 the gate never opened")
            sys.exit(1)
        time.sleep(0.01)


def sockopt(addr, level, name, value):
    try:
        s = socket.socket(family_of(addr), socket.SOCK_DGRAM)
        s.setsockopt(int(level), int(name), int(value))
        out("ok")
    except OSError as err:
        fail(err)


IPOPT_LSRR = 0x83
IPOPT_SSRR = 0x89
IP_RETOPTS = 7


def source_route(kind, via):
    # Type, length, pointer, the first hop, end of options: the kernel appends the
    # destination.
    return bytes([kind, 7, 4]) + socket.inet_aton(via) + b"\0"


def udp_ssrr(dst, dport, via):
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendmsg(
            [b"ping\n"],
            [(socket.IPPROTO_IP, IP_RETOPTS, source_route(IPOPT_SSRR, via))],
            0,
            (dst, int(dport)),
        )
        out("ok")
    except OSError as err:
        fail(err)


def tcp_lsrr_gated(dst, dport, via, gate):
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, source_route(IPOPT_LSRR, via))
        wait_for_gate(gate)
        s.settimeout(2)
        s.connect((dst, int(dport)))
        out("ok")
    except OSError as err:
        fail(err)


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF or 0xFFFF


def raw_ping(dst):
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        ident = os.getpid() & 0xFFFF
        request = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"enforcer"
        request = request[:2] + struct.pack("!H", checksum(request)) + request[4:]
        s.settimeout(2)
        s.sendto(request, (dst, 0))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            packet, src = s.recvfrom(2048)
            icmp = packet[(packet[0] & 0x0F) * 4:]
            if src[0] == dst and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
                out("ok")
                return
        out("timeout")
    except OSError as err:
        fail(err)


def udp6_chain(src, dst, dport, count, cut=False):
    try:
        source = socket.inet_pton(socket.AF_INET6, src)
        target = socket.inet_pton(socket.AF_INET6, dst)
        payload = b"ping\n"
        length = 8 + len(payload)
        pseudo = source + target + struct.pack("!IxxxB", length, 17)
        udp = struct.pack("!HHHH", 40000, int(dport), length, 0) + payload
        udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp)) + udp[8:]
        count = int(count)
        chain = b""
        for i in range(count):
            last = i + 1 == count
            following = 17 if last and not cut else 60
            # Next header, length 0 (8 bytes), PadN over the rest.
            chain += bytes([following, 0, 1, 4, 0, 0, 0, 0])
        # Cut short: the last header names one more, and the packet ends there.
        body = chain if cut else chain + udp
        first = 60 if count else 17
        header = struct.pack("!IHBB", 6 << 28, len(body), first, 64) + source + target
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s.sendto(header + body, (dst, 0))
        out("ok")
    except OSError as err:
        fail(err)


def tcp_echo(addr, port):
    s = socket.socket(family_of(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(16)
    bound = s.getsockname()
    out("listening %s" % (("[%s]:%d" if ":" in bound[0] else "%s:%d") % (bound[0], bound[1])))
    while True:
        conn, _ = s.accept()
        with conn:
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                conn.sendall(data)


def chat(proto, dst, dport, count):
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    try:
        s = socket.socket(family_of(dst), kind)
        s.settimeout(2)
        s.connect((dst, int(dport)))
        for n in range(int(count)):
            message = b"message %d\n" % n
            s.send(message)
            answer = b""
            while len(answer) < len(message):
                part = s.recv(len(message) - len(answer))
                if not part:
                    raise socket.timeout()
                answer += part
            if answer != message:
                out("error 0 the echo differs")
                sys.exit(1)
        s.close()
        out("ok")
    except OSError as err:
        fail(err)


TCP_SYN = 0x02
TCP_ACK = 0x10
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD


def tcp_segment(src, dst, sport, dport, seq, ack, flags):
    """A 20-byte TCP header SRC:SPORT -> DST:DPORT with its checksum (IPv4 or IPv6
    addresses)."""
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0)
    if family_of(src) == socket.AF_INET6:
        pseudo = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                  + struct.pack("!IxxxB", len(header), 6))
    else:
        pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!xBH", 6, len(header))
    return header[:16] + struct.pack("!H", checksum(pseudo + header)) + header[18:]


def udp_datagram(src, dst, sport, dport, payload):
    """A UDP header and `payload` SRC:SPORT -> DST:DPORT with its checksum (IPv4 or IPv6
    addresses)."""
    length = 8 + len(payload)
    if family_of(src) == socket.AF_INET6:
        pseudo = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                  + struct.pack("!IxxxB", length, 17))
    else:
        pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!xBH", 17, length)
    datagram = struct.pack("!HHHH", sport, dport, length, 0) + payload
    return datagram[:6] + struct.pack("!H", checksum(pseudo + datagram)) + datagram[8:]


def ipv4_packet(src, dst, transport, protocol=6):
    """An IPv4 header around a `transport` of `protocol` (TCP unless said), with its
    checksum."""
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(transport), 0, 0x4000, 64, protocol, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + transport


def ipv6_packet(src, dst, transport, protocol=6):
    """An IPv6 header (no extension headers) around a `transport` of `protocol` (TCP
    unless said)."""
    return struct.pack("!IHBB", 6 << 28, len(transport), protocol, 64) + socket.inet_pton(
        socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + transport


def synack_sequence(packet, sport, dport):
    """The sequence number of `packet` (an IPv4 packet, or an IPv6 one without extension
    headers) if it is a SYN-ACK from DPORT to SPORT, else None."""
    if len(packet) >= 40 and packet[0] >> 4 == 6 and packet[6] == 6:
        tcp = packet[40:]
    elif len(packet) >= 20 and packet[0] >> 4 == 4 and packet[9] == 6:
        tcp = packet[(packet[0] & 0x0F) * 4:]
    else:
        return None
    if len(tcp) < 14:
        return None
    source, target, seq, _, _, flags = struct.unpack("!HHIIBB", tcp[:14])
    wanted = TCP_SYN | TCP_ACK
    if (source, target) == (dport, sport) and flags & wanted == wanted:
        return seq
    return None


def await_synack(receive, sport, dport):
    """The SYN-ACK's sequence number from the packets `receive` returns (2 s), or None."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            packet = receive()
        except socket.timeout:
            continue
        seq = synack_sequence(packet, sport, dport)
        if seq is not None:
            return seq
    return None


def handshake_gated(src, dst, dport, sport, gate):
    sport, dport, isn = int(sport), int(dport), 1000
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        s.settimeout(0.2)
        s.sendto(tcp_segment(src, dst, sport, dport, isn, 0, TCP_SYN), (dst, 0))
        cookie = await_synack(lambda: s.recv(2048), sport, dport)
        if cookie is None:
            out("timeout")
            sys.exit(1)
        wait_for_gate(gate)
        ack = tcp_segment(src, dst, sport, dport, isn + 1, (cookie + 1) & 0xFFFFFFFF, TCP_ACK)
        s.sendto(ack, (dst, 0))
        out("ok")
    except OSError as err:
        fail(err)


def forger(via, ethertype):
    """The socket that forges, and how it sends an IP packet of `ethertype` (ETH_P_IP,
    or ETH_P_IPV6 on a packet socket) and receives one."""
    if via == "raw-ip":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        send = lambda packet: s.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
        return s, send, lambda: s.recv(2048)
    kind = socket.SOCK_RAW if via == "packet-raw" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_PACKET, kind, socket.htons(ethertype))
    s.bind(("lo", ethertype))
    if kind == socket.SOCK_RAW:
        # Loopback's Ethernet header: zero addresses, then the type.
        send = lambda packet: s.send(b"\0" * 12 + struct.pack("!H", ethertype) + packet)
        return s, send, lambda: s.recv(2048)[14:]
    send = lambda packet: s.sendto(packet, ("lo", ethertype, 0, 0, b"\0" * 6))
    return s, send, lambda: s.recv(2048)


def forge_syn(via, src, dst, dport, sport, as_nobody=False):
    if as_nobody:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    sport, dport = int(sport), int(dport)
    try:
        v6 = family_of(src) == socket.AF_INET6
        s, send, receive = forger(via, ETH_P_IPV6 if v6 else ETH_P_IP)
        s.settimeout(0.2)
        segment = tcp_segment(src, dst, sport, dport, 1000, 0, TCP_SYN)
        send((ipv6_packet if v6 else ipv4_packet)(src, dst, segment))
        out("ok" if await_synack(receive, sport, dport) is not None else "timeout")
    except OSError as err:
        fail(err)


def forge_udp(src, dst, dport, sport):
    """One datagram SRC:SPORT -> DST:DPORT that no UDP socket sent, put on `lo` by a
    packet socket (SOCK_DGRAM); `ok` once it is sent."""
    try:
        v6 = family_of(src) == socket.AF_INET6
        s, send, _ = forger("packet-dgram", ETH_P_IPV6 if v6 else ETH_P_IP)
        datagram = udp_datagram(src, dst, int(sport), int(dport), b"forged\n")
        send((ipv6_packet if v6 else ipv4_packet)(src, dst, datagram, 17))
        out("ok")
    except OSError as err:
        fail(err)


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    mode, rest = args[0], args[1:]
    flag = lambda name: name in rest
    plain = [a for a in rest if a not in ("v6only", "broadcast", "udplite", "cut", "nobody")]
    if mode == "udp-sink":
        udp_sink(plain[0], plain[1], plain[2], flag("v6only"), flag("udplite"))
    elif mode == "udp-fire":
        udp_fire(*plain[:2], broadcast=flag("broadcast"), udplite=flag("udplite"))
    elif mode == "bind-close":
        bind_close(plain[0], plain[1], plain[2], flag("v6only"))
    elif mode == "udp-query-gated":
        udp_query_gated(*plain[:3])
    elif mode == "sockopt":
        sockopt(*plain[:4])
    elif mode == "udp-ssrr":
        udp_ssrr(*plain[:3])
    elif mode == "tcp-lsrr-gated":
        tcp_lsrr_gated(*plain[:4])
    elif mode == "raw-ping":
        raw_ping(plain[0])
    elif mode == "tcp-echo":
        tcp_echo(*plain[:2])
    elif mode == "chat":
        chat(*plain[:4])
    elif mode == "handshake-gated":
        handshake_gated(*plain[:5])
    elif mode == "forge-syn":
        forge_syn(*plain[:5], as_nobody=flag("nobody"))
    elif mode == "forge-udp":
        forge_udp(*plain[:4])
    elif mode == "udp6-chain":
        udp6_chain(*plain[:4], cut=flag("cut"))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
