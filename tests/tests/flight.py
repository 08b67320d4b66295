"""The pyarrow side of tests/tests/flight.rs: a researcher's five lines.

Arguments: port, root CA, alice's certificate and key, the insurer's
certificate and key, alice's grant id. Prints what the Rust test checks.
"""
import json
import sys

import pyarrow.flight as flight

port, root, cert, key, other_cert, other_key, grant = sys.argv[1:8]


def client(cert_path, key_path):
    return flight.FlightClient(
        f"grpc+tls://127.0.0.1:{port}",
        tls_root_certs=open(root, "rb").read(),
        cert_chain=open(cert_path, "rb").read(),
        private_key=open(key_path, "rb").read(),
    )


# The README's five lines.
alice = client(cert, key)
cmd = {"dataset": "smart-meter-readings", "purpose": "AcademicResearch", "grant": grant}
info = alice.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(cmd)))
try:
    import pandas  # noqa: F401  (read_pandas needs it)
except ImportError:
    table = alice.do_get(info.endpoints[0].ticket).read_all()
    print("no pandas; table only")
    print("rows", table.num_rows)
    print("columns", ",".join(table.column_names))
else:
    df = alice.do_get(info.endpoints[0].ticket).read_pandas()
    print("dataframe", len(df))
    print("rows", len(df))
    print("columns", ",".join(df.columns))

# The insurer asks for the same data for underwriting: denied, with the reason.
insurer = client(other_cert, other_key)
denied = {"dataset": "smart-meter-readings", "purpose": "InsuranceUnderwriting"}
try:
    insurer.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(denied)))
    print("not denied")
except flight.FlightError as e:
    print("denied", type(e).__name__)
    # pyarrow adds its own detail after the server's message.
    print("reason", str(e).splitlines()[0])
