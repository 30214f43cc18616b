#!/usr/bin/env bash
# Run the test suite; fail when pytest collects no test (its exit code 5).
set -uo pipefail
cd "$(dirname "$0")/.."

"${PYTHON:-python3}" -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
    echo "run_tests: pytest collected no tests; failing" >&2
    exit 1
fi
exit "$status"
