"""Arrow Flight server for the streaming benchmark (`broker/benches/streaming.rs`).

Serves the bench's Parquet dataset with pyarrow's own `do_get` over mTLS: the table is read
from the same Parquet files the node reads, cut into batches of the same size as the node's,
held in memory, and every `do_get` (whatever its ticket) answers with a `RecordBatchStream`
of it. Client certificates are required and checked against the federation root.

Prints `listening <port> rows <rows>` once it serves.
"""

import argparse
import glob
import os
import sys

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq


class Server(flight.FlightServerBase):
    def __init__(self, location, table, **kwargs):
        super().__init__(location, **kwargs)
        self.table = table

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self.table)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="directory of the dataset's Parquet files")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--batch-rows", type=int, default=4096)
    a = p.parse_args()
    files = sorted(glob.glob(os.path.join(a.data, "*.parquet")))
    if not files:
        sys.exit(f"no parquet files in `{a.data}`")
    batches = []
    for f in files:
        batches.extend(pq.read_table(f).to_batches(max_chunksize=a.batch_rows))
    table = pa.Table.from_batches(batches)
    with open(a.cert) as c, open(a.key) as k, open(a.root) as r:
        tls = [flight.CertKeyPair(cert=c.read(), key=k.read())]
        root = r.read()
    server = Server(
        "grpc+tls://127.0.0.1:0",
        table,
        tls_certificates=tls,
        verify_client=True,
        root_certificates=root,
    )
    print(f"listening {server.port} rows {table.num_rows}", flush=True)
    server.serve()


if __name__ == "__main__":
    main()
