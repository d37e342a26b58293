"""A small Python client for meshkv, generated from proto/meshkv/v1.

    from meshkv_client import Client
    c = Client(["127.0.0.1:50051", "127.0.0.1:50052"])
    version, token = c.put("greeting", "hello", consistency="QUORUM")
    c.get("greeting", after=[token])          # read-your-writes on any node

The stubs are generated on first import with grpcio-tools (into
_generated/ next to this file), so the proto files stay the one contract.
Calls fail over to the next endpoint on UNAVAILABLE and back off with
jitter on RESOURCE_EXHAUSTED. A retried write is a new write with a new
version; reads and deletes are safe to retry.
"""

import os
import random
import sys
import time

import grpc

_HERE = os.path.dirname(os.path.abspath(__file__))
_PROTO = os.path.join(_HERE, "..", "..", "proto")
_OUT = os.path.join(_HERE, "_generated")


def _stubs():
    """Generates the modules if they are missing or older than the protos."""
    protos = [
        os.path.join("meshkv", "v1", f)
        for f in ("kv.proto", "replication.proto", "admin.proto", "storage.proto")
    ]
    newest = max(os.path.getmtime(os.path.join(_PROTO, p)) for p in protos)
    marker = os.path.join(_OUT, "meshkv", "v1", "kv_pb2_grpc.py")
    if not os.path.exists(marker) or os.path.getmtime(marker) < newest:
        from grpc_tools import protoc

        os.makedirs(_OUT, exist_ok=True)
        args = ["protoc", "-I" + _PROTO, "--python_out=" + _OUT, "--grpc_python_out=" + _OUT]
        if protoc.main(args + protos) != 0:
            raise RuntimeError("grpc_tools.protoc could not compile " + _PROTO)
    if _OUT not in sys.path:
        sys.path.insert(0, _OUT)
    from meshkv.v1 import kv_pb2, kv_pb2_grpc

    return kv_pb2, kv_pb2_grpc


kv_pb2, kv_pb2_grpc = _stubs()

LEVELS = {"ONE": kv_pb2.ONE, "QUORUM": kv_pb2.QUORUM, "ALL": kv_pb2.ALL}


class Client:
    """Talks to the first endpoint that answers, in order."""

    def __init__(self, endpoints, token=None, timeout=5.0, root_certificates=None,
                 retries=5):
        if not endpoints:
            raise ValueError("at least one endpoint")
        self._endpoints = list(endpoints)
        self._timeout = timeout
        self._retries = retries
        self._metadata = [("authorization", "Bearer " + token)] if token else []
        self._creds = (grpc.ssl_channel_credentials(root_certificates)
                       if root_certificates else None)
        self._current = 0
        self._stubs = {}

    def _stub(self, i):
        if i not in self._stubs:
            target = self._endpoints[i]
            channel = (grpc.secure_channel(target, self._creds) if self._creds
                       else grpc.insecure_channel(target))
            self._stubs[i] = kv_pb2_grpc.KVStub(channel)
        return self._stubs[i]

    def _call(self, method, request):
        """Calls `method` on the current node; on UNAVAILABLE the next one,
        on RESOURCE_EXHAUSTED the same one after a jittered backoff."""
        delay, last = 0.05, None
        for _ in range(self._retries * len(self._endpoints)):
            stub = self._stub(self._current)
            try:
                return getattr(stub, method)(request, timeout=self._timeout,
                                             metadata=self._metadata)
            except grpc.RpcError as e:
                last = e
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    self._current = (self._current + 1) % len(self._endpoints)
                elif e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    time.sleep(delay / 2 + random.random() * delay / 2)
                    delay = min(delay * 2, 2.0)
                else:
                    raise
        raise last

    def put(self, key, value, ttl_ms=0, consistency="ONE"):
        """Writes `value` (bytes or str); returns (version, token)."""
        req = kv_pb2.WriteRequest(key=key, ttl_ms=ttl_ms, consistency=LEVELS[consistency])
        if isinstance(value, str):
            req.text = value
        else:
            req.value = value
        resp = self._call("Write", req)
        return (resp.version.hlc, resp.version.node_id), resp.token

    def get(self, key, consistency="ONE", after=()):
        """The value's bytes, or None if the key is absent."""
        resp = self._call("Read", kv_pb2.ReadRequest(
            key=key, consistency=LEVELS[consistency], after=list(after)))
        return resp.value if resp.found else None

    def delete(self, key, consistency="ONE"):
        """Deletes the key; returns the delete's token."""
        return self._call("Delete", kv_pb2.DeleteRequest(
            key=key, consistency=LEVELS[consistency])).token

    def scan(self, prefix=""):
        """Yields (key, value) of the live keys under `prefix`, in key order."""
        stub = self._stub(self._current)
        for page in stub.Scan(kv_pb2.ScanRequest(prefix=prefix), timeout=self._timeout,
                              metadata=self._metadata):
            for e in page.entries:
                yield e.key, e.value
