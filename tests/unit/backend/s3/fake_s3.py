#!/usr/bin/env python3
"""A small S3 server for the S3 client's unit tests (stdlib only).

It checks every request's SigV4 signature the way AWS and radosgw do
(canonical URI as sent, canonical query rebuilt from the decoded parameters,
the signed headers, x-amz-content-sha256 required), serves GET/HEAD with
Range and If-Match, ListObjectsV2 with prefix, delimiter and continuation
tokens, and injects faults on request of the test:

  POST /_ctl/put?key=K          body = the object's bytes (new ETag)
  POST /_ctl/fault?kind=K&count=N&action=A
        kind: get | head | list | any;  action: status:503:SlowDown |
        status:500 | reset | hang:SECONDS | short | listing:XML (body = XML)
  POST /_ctl/page?size=N        ListObjectsV2 page size
  GET  /_ctl/stats              JSON: requests per kind, max concurrent GETs
  POST /_ctl/reset_stats

Usage: fake_s3.py --port P (0: any; the port is printed on stdout)
                  --bucket B --access-key AK --secret-key SK [--region R]
"""
import argparse
import base64
import datetime
import hashlib
import hmac
import http.server
import json
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from xml.sax.saxutils import escape


def uri_encode(s, keep_slash):
    safe = "-._~" + ("/" if keep_slash else "")
    return urllib.parse.quote(s, safe=safe)


class State:
    def __init__(self, bucket, ak, sk, region):
        self.bucket, self.ak, self.sk, self.region = bucket, ak, sk, region
        self.objects = {}  # key -> (bytes, etag, mtime)
        self.faults = []   # [kind, count, action, body]
        self.page_size = 1000
        self.lock = threading.Lock()
        self.stats = {}
        self.active_gets = 0
        self.max_active_gets = 0

    def count(self, kind):
        with self.lock:
            self.stats[kind] = self.stats.get(kind, 0) + 1

    def take_fault(self, kind):
        with self.lock:
            for f in self.faults:
                if f[0] in (kind, "any") and f[1] > 0:
                    f[1] -= 1
                    return f[2], f[3]
        return None, None


def signature_ok(h, st):
    """Returns None when the request is signed right, else (status, code)."""
    auth = h.headers.get("Authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return 403, "AccessDenied"
    fields = {}
    for part in auth[len("AWS4-HMAC-SHA256 "):].split(","):
        k, _, v = part.strip().partition("=")
        fields[k] = v
    cred = fields.get("Credential", "").split("/")
    if len(cred) != 5 or cred[0] != st.ak:
        return 403, "InvalidAccessKeyId"
    payload = h.headers.get("x-amz-content-sha256")
    if payload is None:
        return 400, "InvalidRequest"
    path, _, query = h.path.partition("?")
    params = []
    for item in query.split("&") if query else []:
        name, _, value = item.partition("=")
        params.append((uri_encode(urllib.parse.unquote(name), False),
                       uri_encode(urllib.parse.unquote(value), False)))
    params.sort()
    cquery = "&".join(f"{n}={v}" for n, v in params)
    signed = fields.get("SignedHeaders", "").split(";")
    # As radosgw: a header that is signed but not sent (curl signs an empty
    # "Expect:" it then leaves out) cannot match.
    if any(h.headers.get(n) is None for n in signed):
        return (403, "SignatureDoesNotMatch")
    cheaders = "".join(f"{n}:{' '.join((h.headers.get(n) or '').split())}\n" for n in signed)
    creq = "\n".join([h.command, path, cquery, cheaders, ";".join(signed), payload])
    amz_date = h.headers.get("x-amz-date", "")
    scope = "/".join(cred[1:])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(creq.encode()).hexdigest()])
    key = ("AWS4" + st.sk).encode()
    for part in cred[1:]:
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    want = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, fields.get("Signature", "")):
        return 403, "SignatureDoesNotMatch"
    if cred[2] != st.region or cred[3] != "s3":
        return 403, "SignatureDoesNotMatch"
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=None, head=False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def error(self, status, code, head=False):
        body = (f"<?xml version=\"1.0\"?><Error><Code>{code}</Code>"
                f"<Message>{code} from fake_s3</Message></Error>").encode()
        self.reply(status, body, {"Content-Type": "application/xml"}, head)

    # ---- control -------------------------------------------------------------
    def control(self):
        st = self.server.st
        url = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        if url.path == "/_ctl/put":
            etag = hashlib.md5(body).hexdigest()
            with st.lock:
                st.objects[q["key"]] = (body, etag, time.time())
            return self.reply(200, etag.encode())
        if url.path == "/_ctl/fault":
            with st.lock:
                st.faults.append([q["kind"], int(q["count"]), q["action"], body])
            return self.reply(200)
        if url.path == "/_ctl/clear":
            with st.lock:
                st.faults.clear()
            return self.reply(200)
        if url.path == "/_ctl/page":
            st.page_size = int(q["size"])
            return self.reply(200)
        if url.path == "/_ctl/stats":
            with st.lock:
                out = dict(st.stats, max_active_gets=st.max_active_gets)
            return self.reply(200, json.dumps(out).encode())
        if url.path == "/_ctl/reset_stats":
            with st.lock:
                st.stats, st.max_active_gets = {}, 0
            return self.reply(200)
        return self.reply(404)

    # ---- S3 ------------------------------------------------------------------
    def do_POST(self):
        if self.path.startswith("/_ctl/"):
            return self.control()
        return self.error(405, "MethodNotAllowed")

    def do_HEAD(self):
        self.s3(head=True)

    def do_GET(self):
        if self.path.startswith("/_ctl/"):
            return self.control()
        self.s3(head=False)

    def s3(self, head):
        st = self.server.st
        path, _, query = self.path.partition("?")
        parts = path.split("/", 2)
        bucket = urllib.parse.unquote(parts[1]) if len(parts) > 1 else ""
        key = urllib.parse.unquote(parts[2]) if len(parts) > 2 else ""
        kind = "head" if head else ("list" if not key else "get")
        st.count(kind)
        action, fbody = st.take_fault(kind)
        if action is not None:
            if action == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.close_connection = True
                self.connection.close()
                return
            if action.startswith("hang:"):
                time.sleep(float(action[5:]))
                self.close_connection = True
                return
            if action.startswith("status:"):
                bits = action.split(":")
                return self.error(int(bits[1]), bits[2] if len(bits) > 2 else "InternalError", head)
        bad = signature_ok(self, st)
        if bad:
            return self.error(bad[0], bad[1], head)
        if bucket != st.bucket:
            return self.error(404, "NoSuchBucket", head)
        if kind == "list":
            if action and action.startswith("listing"):
                return self.reply(200, fbody, {"Content-Type": "application/xml"})
            return self.list(query)
        with st.lock:
            obj = st.objects.get(key)
        if obj is None:
            return self.error(404, "NoSuchKey", head)
        data, etag, mtime = obj
        if self.headers.get("If-Match") not in (None, f'"{etag}"', etag):
            return self.error(412, "PreconditionFailed", head)
        hdrs = {"ETag": f'"{etag}"',
                "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(mtime))}
        rng = self.headers.get("Range")
        if rng is None:
            return self.reply(200, data, hdrs, head)
        a, _, b = rng[len("bytes="):].partition("-")
        a = int(a)
        b = min(int(b) if b else len(data) - 1, len(data) - 1)
        if a >= len(data):
            return self.error(416, "InvalidRange", head)
        hdrs["Content-Range"] = f"bytes {a}-{b}/{len(data)}"
        body = data[a:b + 1]
        with st.lock:
            st.active_gets += 1
            st.max_active_gets = max(st.max_active_gets, st.active_gets)
        try:
            time.sleep(0.02)  # lets parallel requests overlap
            if action == "short":
                self.send_response(206)
                for k, v in hdrs.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.reply(206, body, hdrs, head)
        finally:
            with st.lock:
                st.active_gets -= 1

    def list(self, query):
        st = self.server.st
        q = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        prefix, delim = q.get("prefix", ""), q.get("delimiter", "")
        max_keys = min(int(q.get("max-keys", "1000")), st.page_size)
        start = base64.urlsafe_b64decode(q["continuation-token"]).decode() \
            if "continuation-token" in q else ""
        with st.lock:
            keys = sorted(k for k in st.objects if k.startswith(prefix))
        entries, seen = [], set()
        for k in keys:
            rest = k[len(prefix):]
            if delim and delim in rest:
                cp = prefix + rest[: rest.index(delim) + 1]
                if cp not in seen:
                    seen.add(cp)
                    entries.append((cp, True))
            else:
                entries.append((k, False))
        entries = [e for e in entries if e[0] > start]
        page, more = entries[:max_keys], len(entries) > max_keys
        out = ["<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
               "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
               f"<Name>{st.bucket}</Name><Prefix>{escape(prefix)}</Prefix>",
               f"<KeyCount>{len(page)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>",
               f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>"]
        if more:
            tok = base64.urlsafe_b64encode(page[-1][0].encode()).decode()
            out.append(f"<NextContinuationToken>{tok}</NextContinuationToken>")
        for name, is_prefix in page:
            if is_prefix:
                out.append(f"<CommonPrefixes><Prefix>{escape(name)}</Prefix></CommonPrefixes>")
            else:
                data, etag, mtime = st.objects[name]
                lm = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc)
                out.append(f"<Contents><Key>{escape(name)}</Key>"
                           f"<LastModified>{lm.strftime('%Y-%m-%dT%H:%M:%S.000Z')}</LastModified>"
                           f"<ETag>&quot;{etag}&quot;</ETag><Size>{len(data)}</Size>"
                           f"<StorageClass>STANDARD</StorageClass></Contents>")
        out.append("</ListBucketResult>")
        self.reply(200, "".join(out).encode(), {"Content-Type": "application/xml"})


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--access-key", required=True)
    ap.add_argument("--secret-key", required=True)
    ap.add_argument("--region", default="us-east-1")
    a = ap.parse_args()
    srv = Server(("127.0.0.1", a.port), Handler)
    srv.st = State(a.bucket, a.access_key, a.secret_key, a.region)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
