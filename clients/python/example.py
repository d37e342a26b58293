"""Writes, reads back on another node with the write's token, and lists.

    pip install -r requirements.txt
    python3 example.py 127.0.0.1:50051 127.0.0.1:50052
"""

import sys

from meshkv_client import Client

first, second = sys.argv[1], sys.argv[2]
writer = Client([first])
version, token = writer.put("greeting", "hello from python", consistency="QUORUM")
print("wrote version", version, "token", token)
reader = Client([second])
print("read on", second, ":", reader.get("greeting", after=[token]))
for key, value in reader.scan("greet"):
    print(key, value)
