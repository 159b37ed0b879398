#!/usr/bin/env python3
"""A sketch of a Hoard sync client in Python, on grpcio.

It cuts a file into 4 MiB blocks, asks the cell which blocks it lacks (FindMissing), uploads only
those, and writes a manifest (one BLAKE3 hash per line, in order); `download` reads a manifest back
into a file and checks every block against its hash.

    python3 hoard_sync.py upload FILE MANIFEST
    python3 hoard_sync.py download MANIFEST FILE

The cell is named by the same environment variables as the `hoard` CLI (`. DATA/hoard.env` after
`hoard dev`): HOARD_ENDPOINT (http://host:port or https://host:port), and, where the cell asks for
them, HOARD_CA (a PEM file of the CA that signed the frontend's certificate) and HOARD_TOKEN (a bearer
token).

The gRPC stubs are generated from proto/hoard/v1/blockstore.proto on first use, into
HOARD_PY_GEN (default: .gen beside this file); nothing generated is kept in the repository.
Needs: pip install grpcio grpcio-tools blake3
"""

import os
import sys
from pathlib import Path

BLOCK = 4 * 1024 * 1024
HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"


def load_stubs():
    """Generates the Python stubs of the public API (once) and imports them."""
    gen = Path(os.environ.get("HOARD_PY_GEN", HERE / ".gen"))
    proto = PROTO_ROOT / "hoard" / "v1" / "blockstore.proto"
    out = gen / "hoard" / "v1" / "blockstore_pb2_grpc.py"
    if not out.exists() or out.stat().st_mtime < proto.stat().st_mtime:
        from grpc_tools import protoc

        gen.mkdir(parents=True, exist_ok=True)
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            str(proto),
        ]
        if protoc.main(args) != 0:
            sys.exit(f"hoard_sync: protoc failed on {proto}")
    sys.path.insert(0, str(gen))
    from hoard.v1 import blockstore_pb2, blockstore_pb2_grpc

    return blockstore_pb2, blockstore_pb2_grpc


pb, pb_grpc = load_stubs()
import blake3  # noqa: E402
import grpc  # noqa: E402


def channel():
    """A channel to HOARD_ENDPOINT, with TLS and a bearer token when the environment names them."""
    endpoint = os.environ.get("HOARD_ENDPOINT", "http://127.0.0.1:7700")
    secure = endpoint.startswith("https://")
    target = endpoint.split("://", 1)[-1].rstrip("/")
    options = [
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ]
    token = os.environ.get("HOARD_TOKEN")
    ca = os.environ.get("HOARD_CA")
    if not secure:
        return grpc.insecure_channel(target, options=options), token
    root = Path(ca).read_bytes() if ca else None
    creds = grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.secure_channel(target, creds, options=options), token


def calls(token):
    """Per-call metadata: the bearer token, if any."""
    return [("authorization", f"Bearer {token}")] if token else []


def blocks_of(path):
    with open(path, "rb") as f:
        while True:
            data = f.read(BLOCK)
            if not data:
                return
            yield data


def upload(path, manifest):
    chan, token = channel()
    stub = pb_grpc.BlockStoreStub(chan)
    md = calls(token)
    hashes = [blake3.blake3(b).hexdigest() for b in blocks_of(path)]
    if not hashes:
        sys.exit(f"hoard_sync: {path} is empty: nothing to upload")
    # Ask once for the whole file: only what the cell lacks is sent.
    missing = set(stub.FindMissing(pb.FindMissingRequest(hashes=hashes), metadata=md).missing)
    sent = 0
    for h, data in zip(hashes, blocks_of(path)):
        if h not in missing:
            continue
        missing.discard(h)  # a block that repeats inside the file is sent once

        def stream(data=data, h=h):
            yield pb.PutRequest(header=pb.PutHeader(size=len(data), expected_hash=h))
            yield pb.PutRequest(chunk=data)

        resp = stub.Put(stream(), metadata=md)
        if resp.hash != h:
            sys.exit(f"hoard_sync: the cell stored {resp.hash} for a block hashing to {h}")
        sent += 1
    tmp = Path(str(manifest) + ".partial")
    tmp.write_text("".join(h + "\n" for h in hashes))
    tmp.replace(manifest)
    print(f"uploaded {sent} of {len(hashes)} blocks ({len(hashes) - sent} already stored)")


def download(manifest, path):
    chan, token = channel()
    stub = pb_grpc.BlockStoreStub(chan)
    md = calls(token)
    hashes = [line.strip() for line in Path(manifest).read_text().splitlines() if line.strip()]
    tmp = Path(str(path) + ".partial")
    total = 0
    with open(tmp, "wb") as out:
        for h in hashes:
            data = b"".join(r.data for r in stub.Get(pb.GetRequest(hash=h), metadata=md))
            if blake3.blake3(data).hexdigest() != h:
                sys.exit(f"hoard_sync: block {h} came back with other bytes")
            out.write(data)
            total += len(data)
    tmp.replace(path)
    print(f"downloaded {len(hashes)} blocks, {total} bytes, every block checked")


def main(argv):
    if len(argv) != 4 or argv[1] not in ("upload", "download"):
        sys.exit(__doc__.split("\n\n")[1])
    try:
        (upload if argv[1] == "upload" else download)(argv[2], argv[3])
    except grpc.RpcError as e:
        sys.exit(f"hoard_sync: {e.code().name}: {e.details()}")


if __name__ == "__main__":
    main(sys.argv)
