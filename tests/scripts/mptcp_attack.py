#!/usr/bin/env python3
"""Multipath TCP helpers for tests/tests/redteam_mptcp.rs (stdlib only).

Servers print `listening <addr>` once ready; clients print what happened, one line per
step. Every loop is bounded in count and time.

Modes:
  serve ADDR PORT WAIT_MS NAME
        MPTCP listener (IPPROTO_MPTCP, 262) on ADDR:PORT (IPv6 only for an IPv6 ADDR,
        so that an IPv4 server can share the port); announces; answers each
        connection with NAME and a newline, then reads and discards what it is sent until
        the peer closes or WAIT_MS has passed (at most 64 connections)
  connect PROTO DST PORT HOLD_MS
        a PROTO (`mptcp` or `tcp`) client: connect DST:PORT (3 s at most), print
        `ok <answer>` or `error <errno> <text>`; then keep the connection for HOLD_MS,
        writing one byte every 100 ms (so the path manager has a connection to add
        subflows to, and traffic for them), and print `done`
  pass-and-connect PROTO PROCS DST PORT
        make a PROTO socket here, in this process's cgroup; fork a child that moves itself
        into the cgroup whose `cgroup.procs` file is PROCS and receives the socket over
        SCM_RIGHTS; the child connects it to DST:PORT (3 s at most) and prints `ok
        <answer>` or `error <errno> <text>`
"""
import errno
import os
import select
import socket
import sys
import time

IPPROTO_MPTCP = 262


def out(line):
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The test stopped reading (it has what it needs); nothing left to tell.
        pass


def fam(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def show(bound):
    return ("[%s]:%d" if ":" in bound[0] else "%s:%d") % (bound[0], bound[1])


def proto(name):
    return {"mptcp": IPPROTO_MPTCP, "tcp": socket.IPPROTO_TCP}[name]


def error_line(err):
    code = err.errno or 0
    return "error %d %s" % (code, errno.errorcode.get(code, err.strerror or str(err)))


def serve(addr, port, wait_ms, name):
    s = socket.socket(fam(addr), socket.SOCK_STREAM, IPPROTO_MPTCP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if s.family == socket.AF_INET6:
        # Beside an IPv4 server on the same port.
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, int(port)))
    s.listen(16)
    out("listening %s" % show(s.getsockname()))
    deadline = time.time() + int(wait_ms) / 1000.0
    conns = []
    accepted = 0
    while time.time() < deadline:
        r, _, _ = select.select([s] + conns, [], [], max(0.0, min(0.2, deadline - time.time())))
        for ready in r:
            if ready is s:
                if accepted >= 64:
                    continue
                c, _peer = s.accept()
                accepted += 1
                try:
                    c.sendall(name.encode() + b"\n")
                    conns.append(c)
                except OSError:
                    c.close()
                continue
            try:
                data = ready.recv(4096)
            except OSError:
                data = b""
            if not data:
                conns.remove(ready)
                ready.close()


def connect(kind, dst, port, hold_ms):
    c = socket.socket(fam(dst), socket.SOCK_STREAM, proto(kind))
    c.settimeout(3.0)
    try:
        c.connect((dst, int(port)))
        answer = c.recv(256).decode(errors="replace").strip()
    except OSError as err:
        out(error_line(err))
        return
    out("ok %s" % answer)
    deadline = time.time() + int(hold_ms) / 1000.0
    for _ in range(10000):
        if time.time() >= deadline:
            break
        try:
            c.sendall(b".")
        except OSError as err:
            out(error_line(err))
            return
        time.sleep(0.1)
    c.close()
    out("done")


def pass_and_connect(kind, procs, dst, port):
    s = socket.socket(fam(dst), socket.SOCK_STREAM, proto(kind))
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = os.fork()
    if child == 0:
        try:
            parent_end.close()
            s.close()
            with open(procs, "w") as f:
                f.write("0")
            child_end.settimeout(3.0)
            _msg, fds, _flags, _addr = socket.recv_fds(child_end, 16, 1)
            c = socket.socket(fileno=fds[0])
            c.settimeout(3.0)
            c.connect((dst, int(port)))
            out("ok %s" % c.recv(256).decode(errors="replace").strip())
        except OSError as err:
            out(error_line(err))
        finally:
            os._exit(0)
    child_end.close()
    socket.send_fds(parent_end, [b"x"], [s.fileno()])
    s.close()
    deadline = time.time() + 6.0
    while time.time() < deadline:
        pid, _status = os.waitpid(child, os.WNOHANG)
        if pid:
            return
        time.sleep(0.05)
    os.kill(child, 9)
    os.waitpid(child, 0)
    out("error 0 the child did not finish")


def main():
    args = sys.argv[1:]
    mode, rest = args[0], args[1:]
    try:
        {
            "serve": serve,
            "connect": connect,
            "pass-and-connect": pass_and_connect,
        }[mode](*rest)
    except OSError as err:
        out(error_line(err))
        sys.exit(1)


if __name__ == "__main__":
    main()
