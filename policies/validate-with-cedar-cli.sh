#!/usr/bin/env bash
# Validates policies/schema.cedarschema and every policies/policies/*.cedar,
# unchanged, with the official Cedar CLI (crate `cedar-policy-cli`, binary
# `cedar`) in strict mode with warnings denied — the same bar the engine's
# loader sets. Each file is validated on its own (so an error names the
# file), then all files together as one set (as the engine loads them).
#
#   policies/validate-with-cedar-cli.sh            # uses `cedar` from PATH
#   CEDAR=/path/to/cedar policies/validate-with-cedar-cli.sh
#
# Install the CLI with: cargo install cedar-policy-cli --version '^4.14' --locked
# Exit status: 0 all valid, 1 a file or the set is invalid, 2 no CLI found.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
schema="$here/schema.cedarschema"
cedar="${CEDAR:-cedar}"

if ! command -v "$cedar" >/dev/null 2>&1; then
    echo "error: cedar CLI \`$cedar\` not found; install it with \`cargo install cedar-policy-cli --version '^4.14' --locked\` or set CEDAR" >&2
    exit 2
fi
echo "using $("$cedar" --version 2>/dev/null || echo "$cedar")"

shopt -s nullglob
files=("$here"/policies/*.cedar)
if ((${#files[@]} == 0)); then
    echo "error: no policy files in \`$here/policies\`" >&2
    exit 1
fi

validate() {
    "$cedar" validate \
        --schema "$schema" --schema-format cedar \
        --policies "$1" \
        --validation-mode strict \
        --deny-warnings
}

status=0
for f in "${files[@]}"; do
    if validate "$f" >/dev/null; then
        echo "ok      ${f#"$here"/}"
    else
        echo "FAILED  ${f#"$here"/}" >&2
        validate "$f" >&2 || true
        status=1
    fi
done

combined="$(mktemp --suffix=.cedar)"
trap 'rm -f "$combined"' EXIT
for f in "${files[@]}"; do
    cat "$f"
    printf '\n'
done >"$combined"
if validate "$combined" >/dev/null; then
    echo "ok      all ${#files[@]} files as one set"
else
    echo "FAILED  all files as one set" >&2
    validate "$combined" >&2 || true
    status=1
fi
exit "$status"
