#!/usr/bin/env bash
# Stops the broker started by start.sh: SIGTERM (clean shutdown), up to
# KAFKA_STOP_TIMEOUT (30 s), then SIGKILL. Removes the pid file.
#   deploy/kafka/stop.sh          stop, keep data (next start.sh reuses the storage)
#   deploy/kafka/stop.sh --wipe   stop and delete the data dir (topics, offsets, logs)
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

wipe=0
for arg in "$@"; do
    case "$arg" in
        --wipe) wipe=1 ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        *) echo "stop.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

status="not running"
if pid="$(kafka_running_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
        status="killed (pid $pid, no clean shutdown within ${KAFKA_STOP_TIMEOUT}s)"
    else
        status="stopped (pid $pid)"
    fi
fi
rm -f "$KAFKA_PID_FILE"

if ((wipe)); then
    case "$KAFKA_DATA" in
        ""|/|"$HOME"|"$NOTIFGUARD_CACHE") echo "stop.sh: refusing to wipe '$KAFKA_DATA'" >&2; exit 1 ;;
    esac
    rm -rf "$KAFKA_DATA"
    status="$status, data wiped ($KAFKA_DATA)"
fi
echo "kafka: $status"
