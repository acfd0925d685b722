#!/usr/bin/env python3
"""AWS on loopback for stallwatch's cloud tests: moto (EC2 + CloudWatch), a CBOR<->query proxy
in front of it, and an IMDSv2 server that behaves like the real one.

Why the proxy: aws-sdk-cloudwatch >= 1.100 speaks Smithy RPCv2 CBOR
(POST /service/GraniteServiceVersion20100801/operation/<Op>), moto only query/JSON. The proxy
decodes the CBOR request (member names are the Smithy model's, the same botocore uses), makes
the call with boto3 against moto, and encodes the result back as CBOR (timestamps as tag 1).
Everything else (the agent's signed EC2 Query POSTs) is forwarded to moto byte for byte.

Why our own IMDS: moto's omits the x-aws-ec2-metadata-token-ttl-seconds reply header that
aws-config requires; this one requires the token like IMDSv2 does (401 without it).

Control API on the proxy (JSON): POST /_harness/setup, /_harness/attach, /_harness/put,
/_harness/fail, /_harness/paginate, /_harness/status, /_harness/modify, /_harness/reset-calls;
GET /_harness/calls. Prints one JSON line with the addresses, then serves until stdin closes or
SIGTERM.

What is real moto and what is a fake of ours (moto 5.2 lacks or simplifies these):
- DescribeVolumeStatus is ours entirely (moto raises NotImplementedError): every volume asked
  is `ok` with `io-enabled` passed and `io-performance` not-applicable, unless
  /_harness/status {"volume_id", "status", "io_enabled", "io_performance", "init_progress",
  "init_eta", "init_type"} says otherwise (the 2025 fields `attachmentStatuses` and
  `initializationStatusDetails` included).
- DescribeVolumesModifications is moto's, but moto completes every modification at once: a
  /_harness/modify {"volume_id", "type"?, "size"?, "iops"?, "throughput"?, "state", "progress"}
  makes the modification in moto and then reports it in `state` at `progress` until the next
  /_harness/modify of that volume.
- DescribeVolumes is moto's; `createTime` is rewritten for volumes set up with
  "created_ago": seconds (moto stamps the moment of its create_volume call).
- DescribeInstanceTypes, CreateVolume, AttachVolume, ModifyVolume, PutMetricData and
  GetMetricData are moto's.

/_harness/paginate {"api": "ec2"|"cloudwatch", "count": n, "delay": seconds}: the next n answers
of DescribeVolumes or GetMetricData come after `delay` and carry a next token, so a client goes
on asking for pages (each answer quick enough for a per-request timeout, the whole call not).
"""
import datetime
import json
import re
import urllib.parse
import xml.etree.ElementTree as ET
import secrets
import signal
import socket
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import cbor2
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
CW_PREFIX = "/service/GraniteServiceVersion20100801/operation/"
# The next token of an answer made to page on; never sent on to moto.
MORE = "stallwatch-harness-more"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class World:
    def __init__(self, moto_url):
        self.moto_url = moto_url
        kw = dict(endpoint_url=moto_url, region_name=REGION,
                  aws_access_key_id="test", aws_secret_access_key="test")
        self.cw = boto3.client("cloudwatch", **kw)
        self.ec2 = boto3.client("ec2", **kw)
        self.lock = threading.Lock()
        self.calls = []          # [{"api": "cloudwatch"|"ec2", "op": ..., "queries": n, "status": s}]
        self.fail = {}           # api -> {"count", "status", "code"}
        self.paginate = {}       # api -> {"count", "delay"}
        self.instance = None
        self.identity = {"instanceId": "i-00000000000000000", "region": REGION,
                         "availabilityZone": REGION + "a", "instanceType": "m5.large",
                         "accountId": "123456789012", "imageId": "ami-0", "architecture": "x86_64"}
        self.tokens = set()
        self.imds_requests = 0
        self.created = {}        # volume id -> createTime to report (Unix seconds)
        self.status = {}         # volume id -> DescribeVolumeStatus overrides
        self.modstate = {}       # volume id -> {"state", "progress"} reported for its newest modification

    def take_failure(self, api, op=None):
        with self.lock:
            f = self.fail.get(api)
            if f and f["count"] > 0 and f.get("op") in (None, op):
                f["count"] -= 1
                return f
        return None

    def take_page(self, api):
        """The delay before an answer that pages on, or None for a plain answer."""
        with self.lock:
            p = self.paginate.get(api)
            if p and p["count"] > 0:
                p["count"] -= 1
                return p["delay"]
        return None

    def record(self, **kw):
        with self.lock:
            self.calls.append(kw)

    def setup(self, spec):
        amis = self.ec2.describe_images()["Images"]
        inst = self.ec2.run_instances(ImageId=amis[0]["ImageId"], MinCount=1, MaxCount=1,
                                      InstanceType="m5.large")["Instances"][0]
        iid = inst["InstanceId"]
        az = inst["Placement"]["AvailabilityZone"]
        self.instance = (iid, az)
        ids = [self.attach_one(v, i) for i, v in enumerate(spec.get("volumes", []))]
        with self.lock:
            self.identity.update(instanceId=iid, availabilityZone=az)
        return {"instance_id": iid, "availability_zone": az, "region": REGION, "volumes": ids}

    def attach_one(self, v, i):
        iid, az = self.instance
        kw = dict(AvailabilityZone=az, Size=v["size"], VolumeType=v["type"])
        if "iops" in v:
            kw["Iops"] = v["iops"]
        if "throughput" in v:
            kw["Throughput"] = v["throughput"]
        vol = self.ec2.create_volume(**kw)
        dev = v.get("device") or "/dev/sd%s" % chr(ord("f") + i)
        self.ec2.attach_volume(VolumeId=vol["VolumeId"], InstanceId=iid, Device=dev)
        if "created_ago" in v:
            with self.lock:
                self.created[vol["VolumeId"]] = time.time() - float(v["created_ago"])
        return vol["VolumeId"]

    def attach(self, spec):
        # One more volume on the instance of the last setup, at `device` (required: the
        # default names of setup's volumes are taken).
        if "device" not in spec:
            raise ValueError("attach needs a device")
        return {"volume": self.attach_one(spec, 0)}

    def put(self, spec):
        # A volume's AWS/EBS metric (BurstBalance by default), or with "instance_id" an
        # AWS/EC2 metric of the instance (EBSIOBalance%, EBSByteBalance%, CPUCreditBalance).
        # "dimensions": [[name, value], ...] for the checks published under {InstanceId, VolumeId}.
        if "dimensions" in spec:
            namespace = spec.get("namespace", "AWS/EBS")
            dims = [{"Name": k, "Value": v} for k, v in spec["dimensions"]]
        elif "instance_id" in spec:
            namespace, dims = "AWS/EC2", [{"Name": "InstanceId", "Value": spec["instance_id"]}]
        else:
            namespace, dims = "AWS/EBS", [{"Name": "VolumeId", "Value": spec["volume_id"]}]
        data = [{
            "MetricName": spec.get("metric", "BurstBalance"),
            "Dimensions": dims,
            "Timestamp": datetime.datetime.fromtimestamp(ts, datetime.timezone.utc),
            "Value": float(val), "Unit": spec.get("unit", "Percent"),
        } for ts, val in spec["points"]]
        for i in range(0, len(data), 20):
            self.cw.put_metric_data(Namespace=namespace, MetricData=data[i:i + 20])
        return {"ok": True}

    def set_status(self, spec):
        with self.lock:
            self.status[spec["volume_id"]] = spec
        return {"ok": True}

    def modify(self, spec):
        kw = {"VolumeId": spec["volume_id"]}
        for k, name in (("type", "VolumeType"), ("size", "Size"), ("iops", "Iops"),
                        ("throughput", "Throughput")):
            if k in spec:
                kw[name] = spec[k]
        if len(kw) > 1:
            self.ec2.modify_volume(**kw)
        with self.lock:
            self.modstate[spec["volume_id"]] = {"state": spec.get("state", "completed"),
                                                "progress": int(spec.get("progress", 100))}
        return {"ok": True}

    def volume_status_xml(self, form):
        """Our DescribeVolumeStatus: the volumes asked (VolumeId.N), with the test's overrides."""
        ids = [v for k, v in form if re.fullmatch(r"VolumeId\.\d+", k)]
        items = []
        for vid in ids:
            with self.lock:
                o = dict(self.status.get(vid, {}))
                iid = self.instance[0] if self.instance else ""
            details = ("<item><name>io-enabled</name><status>%s</status></item>"
                       "<item><name>io-performance</name><status>%s</status></item>") % (
                o.get("io_enabled", "passed"), o.get("io_performance", "not-applicable"))
            att = ""
            if "io_performance" in o:
                att = ("<attachmentStatuses><item><instanceId>%s</instanceId>"
                       "<ioPerformance>%s</ioPerformance></item></attachmentStatuses>") % (
                    iid, o["io_performance"])
            init = ""
            if "init_progress" in o:
                init = ("<initializationStatusDetails><initializationType>%s</initializationType>"
                        "<progress>%d</progress>%s</initializationStatusDetails>") % (
                    o.get("init_type", "default"), int(o["init_progress"]),
                    "<estimatedTimeToCompleteInSeconds>%d</estimatedTimeToCompleteInSeconds>"
                    % int(o["init_eta"]) if "init_eta" in o else "")
            items.append(
                "<item><volumeId>%s</volumeId><availabilityZone>%s</availabilityZone>"
                "<volumeStatus><status>%s</status><details>%s</details></volumeStatus>"
                "<eventsSet/><actionsSet/>%s%s</item>" % (
                    vid, REGION + "a", o.get("status", "ok"), details, att, init))
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<DescribeVolumeStatusResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
                "<requestId>harness</requestId><volumeStatusSet>%s</volumeStatusSet>"
                "</DescribeVolumeStatusResponse>" % "".join(items))

    def rewrite(self, action, payload):
        """moto's answer with the test's fakes applied (createTime, modification state)."""
        with self.lock:
            created, modstate = dict(self.created), dict(self.modstate)
        if action == "DescribeVolumes" and created:
            field = {vid: {"createTime": datetime.datetime.fromtimestamp(
                t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")}
                for vid, t in created.items()}
        elif action == "DescribeVolumesModifications" and modstate:
            field = {vid: {"modificationState": m["state"], "progress": str(m["progress"])}
                     for vid, m in modstate.items()}
        else:
            return payload
        ns = re.match(rb"(?:<\?xml[^>]*\?>\s*)?<\w+ xmlns=\"([^\"]+)\"", payload)
        if ns:
            ET.register_namespace("", ns.group(1).decode())
        root = ET.fromstring(payload)
        local = lambda e: e.tag.rsplit("}", 1)[-1]
        for item in root.iter():
            if local(item) != "item":
                continue
            vid = next((c.text for c in item if local(c) == "volumeId"), None)
            if vid not in field:
                continue
            for c in item:
                if local(c) in field[vid]:
                    c.text = field[vid][local(c)]
            # A modification still under way has no end time.
            if action == "DescribeVolumesModifications" and field[vid]["modificationState"] != "completed":
                for c in list(item):
                    if local(c) == "endTime":
                        item.remove(c)
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def snake(op):
    out = ""
    for i, c in enumerate(op):
        if c.isupper() and i:
            out += "_"
        out += c.lower()
    return out


def jsonable(o):
    if isinstance(o, dict):
        return {k: jsonable(v) for k, v in o.items() if k != "ResponseMetadata"}
    if isinstance(o, list):
        return [jsonable(v) for v in o]
    return o


def make_proxy(world):
    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def body(self):
            n = int(self.headers.get("content-length") or 0)
            return self.rfile.read(n) if n else b""

        def reply(self, status, payload, ctype, extra=None):
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(payload)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

        def reply_json(self, obj, status=200):
            self.reply(status, json.dumps(obj).encode(), "application/json")

        def do_GET(self):
            if self.path == "/_harness/calls":
                with world.lock:
                    return self.reply_json(list(world.calls))
            self.reply_json({"error": "not found"}, 404)

        def do_POST(self):
            raw = self.body()
            if self.path.startswith("/_harness/"):
                req = json.loads(raw or b"{}")
                what = self.path[len("/_harness/"):]
                try:
                    if what == "setup":
                        return self.reply_json(world.setup(req))
                    if what == "put":
                        return self.reply_json(world.put(req))
                    if what == "fail":
                        with world.lock:
                            # "op": only that action fails (e.g. DescribeVolumeStatus).
                            world.fail[req.get("api", "cloudwatch")] = {
                                "count": int(req["count"]), "status": int(req.get("status", 400)),
                                "code": req.get("code", "Throttling"), "op": req.get("op")}
                        return self.reply_json({"ok": True})
                    if what == "attach":
                        return self.reply_json(world.attach(req))
                    if what == "status":
                        return self.reply_json(world.set_status(req))
                    if what == "modify":
                        return self.reply_json(world.modify(req))
                    if what == "paginate":
                        with world.lock:
                            world.paginate[req["api"]] = {
                                "count": int(req["count"]), "delay": float(req.get("delay", 0))}
                        return self.reply_json({"ok": True})
                    if what == "reset-calls":
                        with world.lock:
                            world.calls.clear()
                        return self.reply_json({"ok": True})
                except Exception as e:  # the test sees the reason
                    return self.reply_json({"error": repr(e)}, 500)
                return self.reply_json({"error": "unknown " + what}, 404)
            if self.path.startswith(CW_PREFIX):
                return self.cloudwatch(self.path[len(CW_PREFIX):], raw)
            return self.forward_ec2(raw)

        def cloudwatch(self, op, raw):
            params = cbor2.loads(raw) if raw else {}
            n = len(params.get("MetricDataQueries", []) or [])
            hdr = {"smithy-protocol": "rpc-v2-cbor"}
            f = world.take_failure("cloudwatch", op)
            if f:
                world.record(api="cloudwatch", op=op, queries=n, status=f["status"])
                body = cbor2.dumps({"__type": "com.amazonaws.cloudwatch#" + f["code"],
                                    "message": "injected by the test harness"})
                return self.reply(f["status"], body, "application/cbor", hdr)
            if params.get("NextToken") == MORE:
                del params["NextToken"]
            delay = world.take_page("cloudwatch") if op == "GetMetricData" else None
            try:
                result = getattr(world.cw, snake(op))(**params)
            except world.cw.exceptions.ClientError as e:
                err = e.response.get("Error", {})
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400)
                world.record(api="cloudwatch", op=op, queries=n, status=status)
                body = cbor2.dumps({"__type": "com.amazonaws.cloudwatch#" + err.get("Code", "Unknown"),
                                    "message": err.get("Message", "")})
                return self.reply(status, body, "application/cbor", hdr)
            world.record(api="cloudwatch", op=op, queries=n, status=200)
            result = jsonable(result)
            if delay is not None:
                time.sleep(delay)
                result["NextToken"] = MORE
            body = cbor2.dumps(result, datetime_as_timestamp=True, timezone=datetime.timezone.utc)
            self.reply(200, body, "application/cbor", hdr)

        def forward_ec2(self, raw):
            form = raw.decode(errors="replace")
            action = next((kv.split("=", 1)[1] for kv in form.split("&") if kv.startswith("Action=")), "?")
            f = world.take_failure("ec2", action)
            if f:
                world.record(api="ec2", op=action, queries=0, status=f["status"])
                xml = ("<Response><Errors><Error><Code>%s</Code><Message>injected by the test harness"
                       "</Message></Error></Errors><RequestID>x</RequestID></Response>" % f["code"])
                return self.reply(f["status"], xml.encode(), "text/xml")
            if action == "DescribeVolumeStatus":
                xml = world.volume_status_xml(urllib.parse.parse_qsl(form))
                world.record(api="ec2", op=action, queries=0, status=200,
                             authorization=self.headers.get("authorization", ""))
                return self.reply(200, xml.encode(), "text/xml")
            delay = world.take_page("ec2") if action == "DescribeVolumes" else None
            # moto does not check signatures: the marker token can go.
            raw = raw.replace(b"&NextToken=" + MORE.encode(), b"")
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "content-length", "connection")}
            req = urllib.request.Request(world.moto_url + self.path, data=raw, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    status, payload = r.status, r.read()
            except urllib.error.HTTPError as e:
                status, payload = e.code, e.read()
            world.record(api="ec2", op=action, queries=0, status=status,
                         authorization=self.headers.get("authorization", ""))
            if status == 200:
                payload = world.rewrite(action, payload)
            if delay is not None and status == 200:
                time.sleep(delay)
                text = re.sub(r"<nextToken>[^<]*</nextToken>|<nextToken/>", "", payload.decode())
                text = text.replace("</DescribeVolumesResponse>",
                                    "<nextToken>%s</nextToken></DescribeVolumesResponse>" % MORE)
                payload = text.encode()
            self.reply(status, payload, "text/xml")

    return Proxy


def make_imds(world):
    class Imds(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, status, text, extra=None):
            payload = text.encode()
            self.send_response(status)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(payload)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

        def do_PUT(self):
            world.imds_requests += 1
            n = int(self.headers.get("content-length") or 0)
            if n:
                self.rfile.read(n)
            ttl = self.headers.get("x-aws-ec2-metadata-token-ttl-seconds")
            if self.path != "/latest/api/token" or not ttl:
                return self.reply(400, "missing or bad token request")
            tok = secrets.token_urlsafe(24)
            with world.lock:
                world.tokens.add(tok)
            self.reply(200, tok, {"x-aws-ec2-metadata-token-ttl-seconds": ttl})

        def do_GET(self):
            world.imds_requests += 1
            with world.lock:
                ok = self.headers.get("x-aws-ec2-metadata-token") in world.tokens
                ident = dict(world.identity)
            if not ok:
                return self.reply(401, "")
            p = self.path
            if p == "/latest/dynamic/instance-identity/document":
                return self.reply(200, json.dumps(ident))
            simple = {
                "/latest/meta-data/instance-id": ident["instanceId"],
                "/latest/meta-data/instance-type": ident["instanceType"],
                "/latest/meta-data/placement/availability-zone": ident["availabilityZone"],
                "/latest/meta-data/placement/region": ident["region"],
                "/latest/meta-data/iam/security-credentials/": "stallwatch-node",
            }
            if p in simple:
                return self.reply(200, simple[p])
            if p == "/latest/meta-data/iam/security-credentials/stallwatch-node":
                exp = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=6))
                return self.reply(200, json.dumps({
                    "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": "ASIAIMDSTEST",
                    "SecretAccessKey": "imds-secret", "Token": "imds-token",
                    "Expiration": exp.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "LastUpdated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}))
            self.reply(404, "")

    return Imds


def main():
    import logging
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    moto_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    world = World("http://127.0.0.1:%d" % moto_port)
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), make_proxy(world))
    imds = ThreadingHTTPServer(("127.0.0.1", 0), make_imds(world))
    for s in (proxy, imds):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(json.dumps({
        "proxy": "http://127.0.0.1:%d" % proxy.server_address[1],
        "imds": "http://127.0.0.1:%d" % imds.server_address[1],
        "moto": world.moto_url,
    }), flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    proxy.shutdown()
    imds.shutdown()
    moto.stop()


if __name__ == "__main__":
    main()
