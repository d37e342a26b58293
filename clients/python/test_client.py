"""The example client against two real nodes (MESHKV_BIN names the binary).

    MESHKV_BIN=target/debug/meshkv python3 clients/python/test_client.py
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from meshkv_client import Client  # noqa: E402

BIN = os.environ.get("MESHKV_BIN", "meshkv")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoNodes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        cls.ports = [free_port(), free_port()]
        cls.procs = []
        for i, port in enumerate(cls.ports):
            other = cls.ports[1 - i]
            log = open(os.path.join(cls.dir.name, f"node{i + 1}.log"), "w")
            cls.procs.append(subprocess.Popen(
                [BIN, "serve", "--node-id", f"node{i + 1}",
                 "--listen", f"127.0.0.1:{port}",
                 "--data-dir", os.path.join(cls.dir.name, f"d{i + 1}"),
                 "--peer", f"node{2 - i}=http://127.0.0.1:{other}"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL))
        for port in cls.ports:
            deadline = time.time() + 60
            while subprocess.run([BIN, "health", "--endpoint", f"http://127.0.0.1:{port}",
                                  "--timeout", "1s"], capture_output=True).returncode != 0:
                if time.time() > deadline:
                    raise RuntimeError(f"node on {port} never became SERVING")
                time.sleep(0.1)

    @classmethod
    def tearDownClass(cls):
        for p in cls.procs:
            p.terminate()
            p.wait(timeout=30)
        cls.dir.cleanup()

    def endpoint(self, i):
        return f"127.0.0.1:{self.ports[i]}"

    def test_write_read_delete_and_scan(self):
        c = Client([self.endpoint(0)])
        version, token = c.put("scan/a", "hello")
        self.assertEqual(version[1], "node1")
        self.assertTrue(token.startswith("t1.node1."), token)
        self.assertEqual(c.get("scan/a"), b"hello")
        c.put("scan/b", b"\x00\xff")
        self.assertEqual(list(c.scan("scan/")), [("scan/a", b"hello"), ("scan/b", b"\x00\xff")])
        c.delete("scan/b")
        self.assertIsNone(c.get("scan/b"))

    def test_a_token_reads_the_write_on_the_other_node(self):
        _, token = Client([self.endpoint(0)]).put("py/t", "mine", consistency="ALL")
        self.assertEqual(Client([self.endpoint(1)]).get("py/t", after=[token]), b"mine")

    def test_a_dead_first_endpoint_fails_over_to_the_next(self):
        c = Client([f"127.0.0.1:{free_port()}", self.endpoint(1)], timeout=2.0)
        c.put("py/f", "over")
        self.assertEqual(c.get("py/f", consistency="QUORUM"), b"over")


if __name__ == "__main__":
    unittest.main(verbosity=2)
