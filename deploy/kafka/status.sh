#!/usr/bin/env bash
# Exit 0 (and print the pid) when a broker started by start.sh is running.
set -euo pipefail
# shellcheck source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
if pid="$(kafka_running_pid)"; then
    echo "kafka $KAFKA_VERSION running: bootstrap $KAFKA_BOOTSTRAP (pid $pid)"
else
    echo "kafka: not running"
    exit 1
fi
