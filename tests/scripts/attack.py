#!/usr/bin/env python3
"""Attack helpers for tests/tests/attacks.rs (stdlib only).

Clients print exactly one line first: `ok`, `timeout`, or `error <errno> <message>`,
like enforcer-probe. Servers print `listening <addr>` once bound.

Modes:
  udp-sink ADDR PORT FILE [v6only]      bind, announce, append "<src-ip> <src-port>" to
                                        FILE for every datagram, echo it back (best effort)
  udp-send-from SRC SPORT DST DPORT TIMEOUT_MS [broadcast]
                                        bind SRC:SPORT (SO_REUSEADDR), sendto DST:DPORT,
                                        wait TIMEOUT_MS for the echo
  udp-fire DST DPORT [broadcast]        sendto from an ephemeral port, no answer awaited
  bind-close tcp|udp ADDR PORT [v6only] bind and close (nothing else)
  packet-udp IFNAME DSTMAC SRC SPORT DST DPORT TIMEOUT_MS
                                        AF_PACKET socket; send one UDP datagram as a raw
                                        Ethernet frame, wait for the echo on a UDP socket
                                        bound to SRC:SPORT
  stream-connect mptcp|tfo DST DPORT TIMEOUT_MS
                                        an MPTCP connect, or a TCP Fast Open sendto
                                        (MSG_FASTOPEN, no connect); expects the echo
  udplite-send DST DPORT                a UDP-Lite datagram (sendto), no answer awaited
  frames IFNAME HEX...                  send each hex frame from an AF_PACKET socket
"""
import errno
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


def udp_sink(addr, port, path, v6only=False):
    s = socket.socket(family_of(addr), socket.SOCK_DGRAM)
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


def udp_send_from(src, sport, dst, dport, timeout_ms, broadcast=False):
    try:
        s = socket.socket(family_of(dst), socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if broadcast:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.bind((src, int(sport)))
        s.settimeout(int(timeout_ms) / 1000)
        s.sendto(b"ping\n", (dst, int(dport)))
        data, _ = s.recvfrom(2048)
        if data != b"ping\n":
            out("error 0 unexpected reply")
            sys.exit(1)
        out("ok")
    except OSError as err:
        fail(err)


def udp_fire(dst, dport, broadcast=False):
    try:
        s = socket.socket(family_of(dst), socket.SOCK_DGRAM)
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


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_udp(src, sport, dst, dport, payload):
    udp_len = 8 + len(payload)
    saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
    pseudo = saddr + daddr + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    csum = checksum(pseudo + udp) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, udp_len, csum) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0x1234, 0, 64, 17, 0, saddr, daddr)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + udp


def packet_udp(ifname, dstmac, src, sport, dst, dport, timeout_ms):
    try:
        p = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    except OSError as err:
        fail(err)
    try:
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.bind((src, int(sport)))
        r.settimeout(int(timeout_ms) / 1000)
        p.bind((ifname, 0))
        srcmac = p.getsockname()[4]
        frame = bytes.fromhex(dstmac.replace(":", "")) + srcmac + b"\x08\x00"
        frame += ipv4_udp(src, int(sport), dst, int(dport), b"ping\n")
        p.send(frame)
        data, _ = r.recvfrom(2048)
        out("ok" if data == b"ping\n" else "error 0 unexpected reply")
    except OSError as err:
        fail(err)


def frames(ifname, *hexframes):
    try:
        p = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        p.bind((ifname, 0))
        for h in hexframes:
            p.send(bytes.fromhex(h))
        out("ok")
    except OSError as err:
        fail(err)


def stream_connect(kind, dst, dport, timeout_ms):
    try:
        if kind == "mptcp":
            s = socket.socket(family_of(dst), socket.SOCK_STREAM, 262)
            s.settimeout(int(timeout_ms) / 1000)
            s.connect((dst, int(dport)))
            s.sendall(b"ping\n")
        else:
            s = socket.socket(family_of(dst), socket.SOCK_STREAM)
            s.settimeout(int(timeout_ms) / 1000)
            s.sendto(b"ping\n", 0x20000000, (dst, int(dport)))
        data = s.recv(64)
        out("ok" if data == b"ping\n" else "error 0 unexpected reply %r" % data)
    except OSError as err:
        fail(err)


def udplite_send(dst, dport):
    try:
        s = socket.socket(family_of(dst), socket.SOCK_DGRAM, 136)
        s.sendto(b"ping\n", (dst, int(dport)))
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
    plain = [a for a in rest if a not in ("v6only", "broadcast")]
    if mode == "udp-sink":
        udp_sink(plain[0], plain[1], plain[2], flag("v6only"))
    elif mode == "udp-send-from":
        udp_send_from(*plain[:5], broadcast=flag("broadcast"))
    elif mode == "udp-fire":
        udp_fire(*plain[:2], broadcast=flag("broadcast"))
    elif mode == "bind-close":
        bind_close(plain[0], plain[1], plain[2], flag("v6only"))
    elif mode == "packet-udp":
        packet_udp(*plain[:7])
    elif mode == "stream-connect":
        stream_connect(*plain[:4])
    elif mode == "udplite-send":
        udplite_send(*plain[:2])
    elif mode == "frames":
        frames(*plain)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
