#!/usr/bin/env python3
"""Attack helpers for tests/tests/attacks.rs (stdlib only).

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
"""
import socket
import sys


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


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    mode, rest = args[0], args[1:]
    flag = lambda name: name in rest
    plain = [a for a in rest if a not in ("v6only", "broadcast", "udplite")]
    if mode == "udp-sink":
        udp_sink(plain[0], plain[1], plain[2], flag("v6only"), flag("udplite"))
    elif mode == "udp-fire":
        udp_fire(*plain[:2], broadcast=flag("broadcast"), udplite=flag("udplite"))
    elif mode == "bind-close":
        bind_close(plain[0], plain[1], plain[2], flag("v6only"))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
