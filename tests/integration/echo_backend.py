#!/usr/bin/python3
"""echo_backend.py - a plain ws:// echo server for wsguard's demo and tests.

    echo_backend.py --host H --port P [--record FILE] [--max-size N]
                    [--subprotocols a,b] [--no-read] [--reject STATUS]

Uses Debian's python3-websockets (10.4, legacy asyncio API). Prints
"listening on H:P" (P is the bound port, also when 0 was given) on stdout
once it accepts connections, then echoes every text or binary message back
with the same type. No compression, no message size limit unless
--max-size is given.

--record FILE appends one JSON line per event, flushed at once:
  {"event": "open", "conn": N, "path": "/p?q", "headers": {...},
   "raw_headers": [[name, value], ...],
   "subprotocol": "chat" | null}              each accepted connection
  {"event": "message", "conn": N, "type": "text" | "binary", "len": N,
   "sha256": "hex"}                            each message received
                                               (text: of its UTF-8 bytes)
  {"event": "close", "conn": N, "code": N, "reason": "..."}
                                               each connection's end
                                               (1006 when it just dropped)
  {"event": "reject", "path": "/p", "status": N}   with --reject
"headers" holds every request header as sent (repeated ones joined with
", "); "raw_headers" the same as [name, value] pairs, one per header line,
in order.

--subprotocols a,b   answer with the first subprotocol the client offers
                     that is in this list (none if there is none).
--no-read            accept the upgrade, then never read from the socket
                     (for backpressure tests).
--reject STATUS      answer every upgrade request with that HTTP status.
"""

import argparse
import asyncio
import hashlib
import http
import itertools
import json
import signal
import sys

import websockets
import websockets.exceptions


class Recorder:
    def __init__(self, path):
        self.f = open(path, "a", encoding="utf-8") if path else None

    def write(self, **event):
        if self.f is None:
            return
        self.f.write(json.dumps(event, sort_keys=False) + "\n")
        self.f.flush()


def headers_dict(headers):
    out = {}
    for name, value in headers.raw_items():
        if name in out:
            out[name] = out[name] + ", " + value
        else:
            out[name] = value
    return out


def parse_args(argv):
    ap = argparse.ArgumentParser(description="WebSocket echo backend")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--record", metavar="FILE")
    ap.add_argument("--max-size", type=int, default=None, metavar="N",
                    help="largest message accepted (default: no limit)")
    ap.add_argument("--subprotocols", default="",
                    help="comma-separated subprotocols this server speaks")
    ap.add_argument("--no-read", action="store_true",
                    help="accept, then never read from the connection")
    ap.add_argument("--reject", type=int, metavar="STATUS",
                    help="answer every upgrade with this HTTP status")
    return ap.parse_args(argv)


async def main(argv):
    args = parse_args(argv)
    rec = Recorder(args.record)
    counter = itertools.count(1)
    supported = [s for s in args.subprotocols.split(",") if s]

    def select_subprotocol(client_offered, server_list):
        for proto in client_offered:
            if proto in supported:
                return proto
        return None

    def process_request(path, request_headers):
        if args.reject is not None:
            rec.write(event="reject", path=path, status=args.reject)
            status = http.HTTPStatus(args.reject)
            body = (status.phrase + "\n").encode()
            return status, [("Content-Type", "text/plain")], body
        return None

    async def handler(ws, path=None):
        conn = next(counter)
        rec.write(event="open", conn=conn, path=ws.path,
                  headers=headers_dict(ws.request_headers),
                  raw_headers=[[n, v] for n, v in
                               ws.request_headers.raw_items()],
                  subprotocol=ws.subprotocol)
        try:
            if args.no_read:
                ws.transport.pause_reading()
                await ws.wait_closed()
            else:
                async for msg in ws:
                    if isinstance(msg, str):
                        data = msg.encode("utf-8")
                        kind = "text"
                    else:
                        data = msg
                        kind = "binary"
                    rec.write(event="message", conn=conn, type=kind,
                              len=len(data),
                              sha256=hashlib.sha256(data).hexdigest())
                    await ws.send(msg)
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            await ws.wait_closed()
            rec.write(event="close", conn=conn, code=ws.close_code,
                      reason=ws.close_reason)

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(
            sig, lambda: stop.done() or stop.set_result(None))

    async with websockets.serve(
            handler, args.host, args.port,
            max_size=args.max_size,
            max_queue=1 if args.no_read else 32,
            compression=None,
            ping_interval=None,
            subprotocols=supported or None,
            select_subprotocol=select_subprotocol if supported else None,
            process_request=process_request) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on {args.host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
