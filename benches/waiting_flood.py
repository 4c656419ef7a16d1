"""Memory under a flood of uploads that must wait: a media-node on its embedded defaults
gets N connections, each an upload of its own account declaring 37 MiB and sending 256 KiB
of body, then holding still. 32 of them fill the 256 MiB budget with 8 MiB reservations;
the others would wait. Prints the server's resident memory (VmRSS, VmHWM) as the
connections open, the answers they got, and what stays resident 15 s later.

    python3 benches/waiting_flood.py target/release/media-node 3000

Run on demand (see BENCHMARKS.md, "Uploads waiting for memory"); needs `ulimit -n` above
N plus a few hundred."""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BINARY = os.path.abspath(sys.argv[1])
N = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
SENT = 256 * 1024
SECRET = os.urandom(32).hex()
BODY = os.urandom(SENT)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def token(sub):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": sub, "exp": int(time.time()) + 3600}).encode())
    signature = b64(hmac.new(SECRET.encode(), head + b"." + claims, hashlib.sha256).digest())
    return (head + b"." + claims + b"." + signature).decode()


def memory(pid):
    fields = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
    kib = lambda name: int(fields[name].split()[0])
    return f"RSS {kib('VmRSS') / 1024:.0f} MiB, peak {kib('VmHWM') / 1024:.0f} MiB"


async def upload(port, i, answers, opened):
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            (f"POST /v1/media HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token(f'flood-{i}')}\r\n"
             f"X-Gr-File-Extension: mp4\r\nContent-Length: {37 * 1024 * 1024}\r\n\r\n").encode()
            + BODY)
        await writer.drain()
        opened.append(writer)
        status = (await asyncio.wait_for(reader.readline(), 90)).decode().strip()
    except Exception as error:  # a refused or reset connection is an answer too
        status = type(error).__name__
    answers[status] = answers.get(status, 0) + 1


async def flood(port, pid):
    answers, opened, tasks = {}, [], []
    for i in range(N):
        tasks.append(asyncio.create_task(upload(port, i, answers, opened)))
        if i % 500 == 499:
            await asyncio.sleep(0.5)
            print(f"{i + 1} connections: {memory(pid)}", flush=True)
    await asyncio.gather(*tasks)
    print(f"all answered: {memory(pid)}; answers {answers}", flush=True)
    for writer in opened:
        writer.close()
    await asyncio.sleep(15)
    print(f"15 s later: {memory(pid)}", flush=True)


def main():
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as data:
        env = dict(os.environ, MEDIA_NODE__AUTH__HS256_SECRET=SECRET,
                   MEDIA_NODE__SERVER__PORT=str(port), MEDIA_NODE__ADMIN__PORT=str(admin),
                   MEDIA_NODE__SERVER__HOST="127.0.0.1", MEDIA_NODE__ADMIN__HOST="127.0.0.1",
                   MEDIA_NODE__LOG__LEVEL="warn")
        server = subprocess.Popen([BINARY, "serve"], cwd=data, env=env)
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            print(f"{N} waiting uploads of 256 KiB each; idle: {memory(server.pid)}", flush=True)
            asyncio.run(flood(port, server.pid))
        finally:
            server.terminate()
            server.wait(10)


main()
