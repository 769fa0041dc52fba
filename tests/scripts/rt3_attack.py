#!/usr/bin/env python3
"""Red-team helpers for tests/tests/redteam3.rs (stdlib only; `tcp-listen` also serves
socket_layer.rs).

Servers print `listening <addr>` once ready; clients print what happened, one line per
step. Every loop is bounded in count and time. Modes whose name is listed in NOBODY
first drop to uid/gid 65534 (`nobody`) and clear their groups.

Modes:
  ping-listen ADDR IDENT WAIT_MS FILE
        (nobody) ping socket (ICMP or ICMPv6 by ADDR's family) bound to ADDR with
        identifier IDENT; announces, then appends "reply <src> <payload>" to FILE for each
        message received within WAIT_MS (the ICMP header is stripped)
  echo-reply-inject DST IDENT PAYLOAD
        raw socket: one ICMP echo reply (ICMPv6 129) to DST with identifier IDENT and
        sequence 1, carrying PAYLOAD; prints `ok`
  recverr-serve-race ADDR PORT WAIT_MS FILE TRIES BUDGET_MS
        (nobody) UDP socket; IP_RECVERR/IPV6_RECVERR set with the 64-bit setsockopt
        and a value longer than a page (4100 bytes) whose first int a forked
        child flips between 0 and 1; at most TRIES calls within BUDGET_MS, until
        getsockopt reads it on (appends "race <tries> <eperm> on 0|1")
  udp-listen ADDR PORT WAIT_MS FILE
        UDP socket bound to ADDR:PORT; announces, appends "<src> <payload>" to FILE for
        each datagram within WAIT_MS
  tcp-listen ADDR PORT WAIT_MS FILE NAME
        TCP listener on ADDR:PORT; announces; each connection is answered with NAME, and
        "accepted <peer>" appended to FILE, within WAIT_MS
  udp-send-dev DEV DST PORT PAYLOAD
        (nobody) UDP socket bound to device DEV (SO_BINDTODEVICE); one sendto DST:PORT
  udp-send-pktinfo IFINDEX DST PORT PAYLOAD
        (nobody) IPv4 UDP socket, no device; one sendmsg to DST:PORT whose IP_PKTINFO
        ancillary data names interface IFINDEX
  tcp-connect-dev DEV SRC DST PORT
        (nobody) TCP socket bound to device DEV and source address SRC (port 0);
        connect DST:PORT, print `ok <answer>` or the error
  tfo-send DST PORT
        (nobody) TCP Fast Open: sendto(MSG_FASTOPEN) of one line to DST:PORT with no
        connect(); prints `ok <answer>` or the error
  udp-stale GATE PORT DECOY WAIT_MS
        (nobody) the stale connected socket: bind a decoy UDP socket to DECOY:PORT, connect
        a second socket to DECOY:PORT, close the decoy, print `ready`, wait for the file
        GATE, send "stale-hello" on the connected socket and print `answer <data>` or
        `timeout` (or the first error)
  tcp-stale GATE PORT DECOY WAIT_MS
        (nobody) the stale SYN: a decoy listener on DECOY:PORT with a backlog of 0, filled
        by one connection; a non-blocking connect to DECOY:PORT whose SYN the full
        backlog drops; close the decoy (and its queued connection); print `ready`; wait
        for GATE; then wait (within WAIT_MS) for the connect to complete and print
        `answer <data>`, `timeout` or the error
"""
import ctypes
import errno
import mmap
import os
import select
import socket
import struct
import sys
import time

IP_RECVERR = 11
IPV6_RECVERR = 25
MSG_ERRQUEUE = 0x2000
SO_BINDTODEVICE = 25

NOBODY = {
    "ping-listen",
    "recverr-serve-race",
    "udp-send-dev",
    "udp-send-pktinfo",
    "tcp-connect-dev",
    "tfo-send",
    "udp-stale",
    "tcp-stale",
}


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def fam(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def show(bound):
    return ("[%s]:%d" if ":" in bound[0] else "%s:%d") % (bound[0], bound[1])


def append(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


def drop_to_nobody():
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


# ---------------------------------------------------------------------------------------
# Ping sockets and echo replies.

def ping_listen(addr, ident, wait_ms, path):
    if fam(addr) == socket.AF_INET:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
    s.bind((addr, int(ident)))
    out("listening %s" % show(s.getsockname()))
    deadline = time.time() + int(wait_ms) / 1000.0
    while time.time() < deadline:
        r, _, _ = select.select([s], [], [], max(0.0, deadline - time.time()))
        if not r:
            break
        data, src = s.recvfrom(2048)
        append(path, "reply %s %s" % (src[0], data[8:].decode(errors="replace")))


def echo_reply_inject(dst, ident, payload):
    payload = payload.encode()
    if fam(dst) == socket.AF_INET:
        body = struct.pack("!BBHHH", 0, 0, 0, int(ident), 1) + payload
        body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    else:
        # ICMPv6 echo reply; the kernel fills the checksum of a raw ICMPv6 socket.
        body = struct.pack("!BBHHH", 129, 0, 0, int(ident), 1) + payload
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.sendto(body, (dst, 0))
    out("ok")


# ---------------------------------------------------------------------------------------
# IP_RECVERR through a value longer than a page.

def recverr_level(s):
    return (socket.IPPROTO_IP, IP_RECVERR) if s.family == socket.AF_INET else (socket.IPPROTO_IPV6, IPV6_RECVERR)


def recverr_on(s):
    level, name = recverr_level(s)
    return s.getsockopt(level, name)


def errqueue_loop(s, wait_ms, path):
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


def recverr_serve_race(addr, port, wait_ms, path, tries, budget_ms):
    s = socket.socket(fam(addr), socket.SOCK_DGRAM)
    level, name = recverr_level(s)
    length = 4100
    shared = mmap.mmap(-1, mmap.PAGESIZE * 2, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    address = ctypes.addressof(ctypes.c_char.from_buffer(shared))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.setsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
    # First without a race: the value 1, constant, 4100 bytes long.
    shared[:4] = struct.pack("=i", 1)
    rc = libc.setsockopt(s.fileno(), level, name, address, length)
    append(path, "constant %s on %d" % ("ok" if rc == 0 else "error %d" % ctypes.get_errno(), recverr_on(s)))
    if recverr_on(s):
        s.setsockopt(level, name, 0)
    shared[:4] = struct.pack("=i", 0)
    deadline = time.time() + int(budget_ms) / 1000.0
    child = os.fork()
    if child == 0:
        # The flipper: bounded by the same deadline (and killed by the parent).
        view = memoryview(shared)
        on, off = b"\x01", b"\x00"
        end = deadline + 1.0
        while time.time() < end:
            for _ in range(20000):
                view[0:1] = on
                view[0:1] = off
        os._exit(0)
    attempts = eperm = 0
    on = 0
    try:
        while attempts < int(tries) and time.time() < deadline:
            attempts += 1
            if libc.setsockopt(s.fileno(), level, name, address, length) != 0:
                if ctypes.get_errno() == errno.EPERM:
                    eperm += 1
            on = recverr_on(s)
            if on:
                break
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
    append(path, "race %d %d on %d" % (attempts, eperm, on))
    s.bind((addr, int(port)))
    errqueue_loop(s, wait_ms, path)


# ---------------------------------------------------------------------------------------
# Plain servers for the peer side.

def udp_listen(addr, port, wait_ms, path):
    s = socket.socket(fam(addr), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    out("listening %s" % show(s.getsockname()))
    deadline = time.time() + int(wait_ms) / 1000.0
    while time.time() < deadline:
        r, _, _ = select.select([s], [], [], max(0.0, deadline - time.time()))
        if not r:
            break
        data, src = s.recvfrom(2048)
        append(path, "%s %s" % (src[0], data.decode(errors="replace")))


def tcp_listen(addr, port, wait_ms, path, name):
    s = socket.socket(fam(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(16)
    out("listening %s" % show(s.getsockname()))
    deadline = time.time() + int(wait_ms) / 1000.0
    s.settimeout(0.2)
    while time.time() < deadline:
        try:
            c, peer = s.accept()
        except socket.timeout:
            continue
        append(path, "accepted %s" % peer[0])
        try:
            c.sendall(name.encode())
        finally:
            c.close()


# ---------------------------------------------------------------------------------------
# Clients bound to a device.

def udp_send_dev(dev, dst, port, payload):
    s = socket.socket(fam(dst), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, dev.encode())
    try:
        s.sendto(payload.encode(), (dst, int(port)))
    except OSError as err:
        out("error %d %s" % (err.errno, err.strerror))
        return
    out("ok")


def udp_send_pktinfo(ifindex, dst, port, payload):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    info = struct.pack("=i4s4s", int(ifindex), b"\0" * 4, b"\0" * 4)
    try:
        s.sendmsg([payload.encode()], [(socket.IPPROTO_IP, 8, info)], 0, (dst, int(port)))
    except OSError as err:
        out("error %d %s" % (err.errno, err.strerror))
        return
    out("ok")


def tfo_send(dst, port):
    s = socket.socket(fam(dst), socket.SOCK_STREAM)
    # Blocking (a socket with a Python timeout is non-blocking: EINPROGRESS), bounded by
    # the send and receive timeouts.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 2, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 2, 0))
    try:
        s.sendto(b"tfo-hello\n", socket.MSG_FASTOPEN, (dst, int(port)))
        out("ok %s" % s.recv(64).decode(errors="replace").strip())
    except socket.timeout:
        out("timeout")
    except OSError as err:
        out("error %d %s" % (err.errno, err.strerror))


def tcp_connect_dev(dev, src, dst, port):
    s = socket.socket(fam(dst), socket.SOCK_STREAM)
    s.settimeout(2.0)
    s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, dev.encode())
    s.bind((src, 0))
    try:
        s.connect((dst, int(port)))
        out("ok %s" % s.recv(64).decode(errors="replace"))
    except socket.timeout:
        out("timeout")
    except OSError as err:
        out("error %d %s" % (err.errno, err.strerror))


# ---------------------------------------------------------------------------------------
# A decision that outlives the socket it was made against.

def wait_for(path, seconds):
    deadline = time.time() + seconds
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.02)
    return os.path.exists(path)


def udp_stale(gate, port, decoy_addr, wait_ms):
    decoy = socket.socket(fam(decoy_addr), socket.SOCK_DGRAM)
    decoy.bind((decoy_addr, int(port)))
    c = socket.socket(fam(decoy_addr), socket.SOCK_DGRAM)
    try:
        c.connect((decoy_addr, int(port)))
    except OSError as err:
        out("error %d %s" % (err.errno, err.strerror))
        return
    decoy.close()
    out("ready")
    if not wait_for(gate, 10):
        out("no-gate")
        return
    c.settimeout(int(wait_ms) / 1000.0)
    try:
        c.send(b"stale-hello")
        out("answer %s" % c.recv(2048).decode(errors="replace"))
    except socket.timeout:
        out("timeout")
    except OSError as err:
        out("error %d %s" % (err.errno, err.strerror))


def tcp_stale(gate, port, decoy_addr, wait_ms):
    f = fam(decoy_addr)
    decoy = socket.socket(f, socket.SOCK_STREAM)
    decoy.bind((decoy_addr, int(port)))
    decoy.listen(0)
    filler = socket.socket(f, socket.SOCK_STREAM)
    filler.settimeout(1.0)
    try:
        filler.connect((decoy_addr, int(port)))
    except OSError as err:
        out("error %d %s" % (err.errno, err.strerror))
        return
    c = socket.socket(f, socket.SOCK_STREAM)
    c.setblocking(False)
    rc = c.connect_ex((decoy_addr, int(port)))
    if rc not in (0, errno.EINPROGRESS):
        out("error %d %s" % (rc, os.strerror(rc)))
        return
    time.sleep(0.2)
    # The SYN met a full backlog and was dropped; the connect is still in progress.
    if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
        out("error early")
        return
    decoy.close()
    filler.close()
    out("ready")
    if not wait_for(gate, 10):
        out("no-gate")
        return
    _, w, _ = select.select([], [c], [], int(wait_ms) / 1000.0)
    if not w:
        out("timeout")
        return
    err = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        out("error %d %s" % (err, os.strerror(err)))
        return
    c.setblocking(True)
    c.settimeout(2.0)
    try:
        c.sendall(b"stale-hello\n")
        out("answer %s" % c.recv(2048).decode(errors="replace"))
    except OSError as err:
        out("error %d %s" % (err.errno or 0, err.strerror))


def main():
    args = sys.argv[1:]
    mode, rest = args[0], args[1:]
    if mode in NOBODY:
        drop_to_nobody()
    try:
        {
            "ping-listen": ping_listen,
            "echo-reply-inject": echo_reply_inject,
            "recverr-serve-race": recverr_serve_race,
            "udp-listen": udp_listen,
            "tcp-listen": tcp_listen,
            "udp-send-dev": udp_send_dev,
            "udp-send-pktinfo": udp_send_pktinfo,
            "tcp-connect-dev": tcp_connect_dev,
            "tfo-send": tfo_send,
            "udp-stale": udp_stale,
            "tcp-stale": tcp_stale,
        }[mode](*rest)
    except OSError as err:
        out("error %d %s" % (err.errno or 0, err.strerror or str(err)))
        sys.exit(1)


if __name__ == "__main__":
    main()
