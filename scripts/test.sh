#!/usr/bin/env bash
# The whole Allmende test suite, on a fresh machine.
#
# Installs what the tests need when it is missing, then runs every test of
# the workspace with cargo nextest. `.ci/run` calls this after its lint steps.
#
#   scripts/test.sh            install what is missing, run all tests
#   scripts/test.sh --no-install   only run the tests
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
[ "${1:-}" = "--no-install" ] && install=0

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ "$install" = 1 ]; then
  # Debian packages the tests need. mold is optional: a faster linker.
  # cvc5 is the SMT solver `allmende policy prove` and the policy property
  # tests use (Cedar's symbolic compiler, policies/README.md).
  missing=()
  command -v mold >/dev/null || missing+=(mold)
  command -v cvc5 >/dev/null || missing+=(cvc5)
  # OpenSSL headers: OpenDP's CSPRNG (allmende-opendata) builds against
  # Debian's libssl-dev, not a vendored copy (.cargo/config.toml).
  pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev pkg-config)
  # PostgreSQL: the postgres connector's tests and the e2e test start their
  # own server from these binaries (as the postgres user when run as root).
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
    && compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null \
    || missing+=(postgresql)
  # mosquitto: the MQTT connector's tests start their own broker on loopback
  # (as the mosquitto user when run as root); mosquitto-clients brings
  # mosquitto_pub, which they and the ingest benchmark publish with.
  command -v /usr/sbin/mosquitto >/dev/null || missing+=(mosquitto)
  command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
  # iproute2: `ip netns` for the federation across network namespaces
  # (broker/tests/netns.rs; it skips without root).
  command -v ip >/dev/null || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
  if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${missing[*]}"
    (as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") \
      || echo "warning: could not install ${missing[*]}; continuing without"
  fi
  # Python grpcio: the standard-client test (reflection v1alpha/v1, health);
  # pyshacl: the DCAT-AP.de export test (tests/tests/catalog.rs);
  # pyarrow and pandas: the Arrow Flight client test (tests/tests/flight.rs);
  # ckanapi: the open-data API test (tests/tests/opendata_api.rs).
  if ! python3 -c 'import grpc, grpc_reflection, grpc_health, pyshacl, pyarrow.flight, pandas, ckanapi' >/dev/null 2>&1; then
    echo "== installing python grpcio, pyshacl, pyarrow, pandas, ckanapi"
    python3 -m pip install -q --disable-pip-version-check \
      grpcio grpcio-reflection grpcio-health-checking pyshacl pyarrow pandas ckanapi
  fi
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "== installing cargo-nextest"
    cargo install cargo-nextest --locked
  fi
fi

if command -v mold >/dev/null && [ -z "${RUSTFLAGS:-}" ]; then
  export RUSTFLAGS="-C link-arg=-fuse-ld=mold"
fi

echo "== cargo nextest run --workspace"
cargo nextest run --workspace --no-fail-fast
