#!/usr/bin/env python3
"""Red-team helpers for tests/tests/redteam.rs (stdlib only).

Servers print `listening <addr>` once ready; clients print `ok`, `timeout` or
`error <errno> <message>` first, like enforcer-probe. Every loop is bounded.

Modes:
  group-then-listen BIND PORT GROUP GPORT IFADDR WAIT_MS FILE
        bind BIND:PORT explicitly, send one datagram to GROUP:GPORT (multicast through
        IFADDR, or broadcast), announce `listening`, then append "<src> <sport> <data>"
        to FILE for every datagram received within WAIT_MS
  fire-from SPORT DST DPORT PAYLOAD
        sendto DST:DPORT from a socket bound to SPORT, no answer awaited
  recverr-serve ADDR PORT WAIT_MS FILE
        UDP server that turns on IP_RECVERR/IPV6_RECVERR and appends "recverr ok" or
        "recverr error <errno>" to FILE, then the same for turning it off and on again
        ("recverr-off ..."); then appends "data <src> <payload>" for datagrams and
        "err <payload>" for error-queue messages received within WAIT_MS
  icmp-inject SERVER SPORT PEER PAYLOAD
        raw ICMP(v6) port-unreachable to SERVER quoting a UDP datagram SERVER:SPORT ->
        PEER:9 that carries PAYLOAD
  reuseport-serve ADDR PORT NAME WAIT_MS [noreuse]
        TCP listener with SO_REUSEPORT (without it: noreuse); answers each connection
        with NAME and closes
  answer-later BIND PORT GATE FILE
        UDP server: answers the first datagram, then once GATE exists sends one more
        datagram to the same peer; appends what happened to FILE
  query-and-listen DST DPORT SPORT WAIT_MS FILE
        sends one query from SPORT, announces, appends what it receives to FILE
  udp-hold ADDR PORT WAIT_MS
        bind a UDP socket and hold it (nothing else)
  connect-names ADDR PORT TRIES
        TCP connects TRIES times (fresh ephemeral port each time) and prints `ok` then
        the names read, one per line (or the first error)
"""
import os
import select
import socket
import struct
import sys
import time

IP_RECVERR = 11
IPV6_RECVERR = 25
MSG_ERRQUEUE = 0x2000


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def fail(err):
    if isinstance(err, socket.timeout):
        out("timeout")
        sys.exit(1)
    out("error %d %s" % (getattr(err, "errno", 0) or 0, getattr(err, "strerror", None) or str(err)))
    sys.exit(1)


def fam(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def show(bound):
    return ("[%s]:%d" if ":" in bound[0] else "%s:%d") % (bound[0], bound[1])


def append(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


def group_then_listen(bind, port, group, gport, ifaddr, wait_ms, path):
    s = socket.socket(fam(bind), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    if fam(group) == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ifaddr))
    s.bind((bind, int(port)))
    try:
        s.sendto(b"discover", (group, int(gport)))
        sent = "sent"
    except OSError as err:
        sent = "send-error %d" % err.errno
    append(path, sent)
    out("listening %s" % show(s.getsockname()))
    deadline = time.time() + int(wait_ms) / 1000.0
    while time.time() < deadline:
        r, _, _ = select.select([s], [], [], max(0.0, deadline - time.time()))
        if not r:
            break
        data, src = s.recvfrom(2048)
        append(path, "%s %d %s" % (src[0], src[1], data.decode(errors="replace")))


def fire_from(sport, dst, dport, payload):
    s = socket.socket(fam(dst), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if fam(dst) == socket.AF_INET6 else "0.0.0.0", int(sport)))
    try:
        s.sendto(payload.encode(), (dst, int(dport)))
    except OSError as err:
        fail(err)
    out("ok")


def reuseport_serve(addr, port, name, wait_ms, noreuse=None):
    s = socket.socket(fam(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of earlier runs
    if noreuse != "noreuse":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((addr, int(port)))
    s.listen(64)
    out("listening %s" % show(s.getsockname()))
    deadline = time.time() + int(wait_ms) / 1000.0
    s.settimeout(0.2)
    while time.time() < deadline:
        try:
            c, _ = s.accept()
        except socket.timeout:
            continue
        try:
            c.sendall(name.encode() + b"\n")
        finally:
            c.close()


def udp_hold(addr, port, wait_ms):
    s = socket.socket(fam(addr), socket.SOCK_DGRAM)
    s.bind((addr, int(port)))
    out("listening %s" % show(s.getsockname()))
    time.sleep(int(wait_ms) / 1000.0)


def answer_later(bind, port, gate, path):
    s = socket.socket(fam(bind), socket.SOCK_DGRAM)
    s.bind((bind, int(port)))
    out("listening %s" % show(s.getsockname()))
    s.settimeout(10)
    data, src = s.recvfrom(2048)
    s.sendto(b"answer", src)
    append(path, "answered %s %d" % src[:2])
    deadline = time.time() + 10
    while not os.path.exists(gate) and time.time() < deadline:
        time.sleep(0.02)
    try:
        s.sendto(b"late-answer", src)
        append(path, "late sent")
    except OSError as err:
        append(path, "late send-error %d" % err.errno)
    time.sleep(10)


def query_and_listen(dst, dport, sport, wait_ms, path):
    s = socket.socket(fam(dst), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sport)))
    s.sendto(b"query", (dst, int(dport)))
    out("listening %s" % show(s.getsockname()))
    deadline = time.time() + int(wait_ms) / 1000.0
    while time.time() < deadline:
        r, _, _ = select.select([s], [], [], max(0.0, deadline - time.time()))
        if not r:
            break
        data, src = s.recvfrom(2048)
        append(path, "%s %d %s" % (src[0], src[1], data.decode(errors="replace")))


def connect_names(addr, port, tries):
    names = []
    for _ in range(int(tries)):
        c = socket.socket(fam(addr), socket.SOCK_STREAM)
        c.settimeout(1.0)
        try:
            c.connect((addr, int(port)))
            names.append(c.recv(64).decode().strip())
        except OSError as err:
            names.append("error-%d" % (err.errno or 0))
        finally:
            c.close()
    out("ok")
    for n in names:
        out(n)


def recverr(s, value):
    if s.family == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, value)
    else:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, value)


def recverr_serve(addr, port, wait_ms, path):
    s = socket.socket(fam(addr), socket.SOCK_DGRAM)
    for label, value in (("recverr", 1), ("recverr-off", 0), ("recverr", 1)):
        try:
            recverr(s, value)
            append(path, "%s ok" % label)
        except OSError as err:
            append(path, "%s error %d" % (label, err.errno or 0))
    s.bind((addr, int(port)))
    out("listening %s" % show(s.getsockname()))
    deadline = time.time() + int(wait_ms) / 1000.0
    p = select.poll()
    p.register(s, select.POLLIN | select.POLLERR)
    while time.time() < deadline:
        if not p.poll(max(1, int((deadline - time.time()) * 1000))):
            break
        try:
            data, _anc, _flags, _src = s.recvmsg(2048, 1024, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            append(path, "err %s" % data.decode(errors="replace"))
            continue
        except BlockingIOError:
            pass
        try:
            data, src = s.recvfrom(2048, socket.MSG_DONTWAIT)
            append(path, "data %s %s" % (src[0], data.decode(errors="replace")))
        except BlockingIOError:
            time.sleep(0.01)


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def icmp_inject(server, sport, peer, payload):
    payload = payload.encode()
    udp = struct.pack("!HHHH", int(sport), 9, 8 + len(payload), 0) + payload
    if fam(server) == socket.AF_INET:
        inner = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
            socket.inet_aton(server), socket.inet_aton(peer),
        )
        inner = inner[:10] + struct.pack("!H", checksum(inner)) + inner[12:]
        body = struct.pack("!BBHI", 3, 3, 0, 0) + inner + udp
        body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    else:
        inner = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64,
                            socket.inet_pton(socket.AF_INET6, server),
                            socket.inet_pton(socket.AF_INET6, peer))
        # ICMPv6 destination unreachable, port unreachable; the kernel fills the checksum.
        body = struct.pack("!BBHI", 1, 4, 0, 0) + inner + udp
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.sendto(body, (server, 0))
    out("ok")


def main():
    args = sys.argv[1:]
    mode, rest = args[0], args[1:]
    try:
        {
            "group-then-listen": group_then_listen,
            "fire-from": fire_from,
            "recverr-serve": recverr_serve,
            "icmp-inject": icmp_inject,
            "reuseport-serve": reuseport_serve,
            "connect-names": connect_names,
            "udp-hold": udp_hold,
            "answer-later": answer_later,
            "query-and-listen": query_and_listen,
        }[mode](*rest)
    except OSError as err:
        fail(err)


if __name__ == "__main__":
    main()
