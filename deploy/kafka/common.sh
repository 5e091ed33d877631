# shellcheck shell=bash disable=SC2034
# Shared settings for deploy/kafka/*.sh (sourced, not executed).
# Every value can be overridden from the environment.

KAFKA_DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Pinned Apache Kafka release; keep in sync with <kafka.version> in pom.xml.
KAFKA_VERSION="${KAFKA_VERSION:-4.1.2}"

NOTIFGUARD_CACHE="${NOTIFGUARD_CACHE:-${HOME:-/root}/.cache/notifguard}"
KAFKA_LIBS="${KAFKA_LIBS:-$NOTIFGUARD_CACHE/kafka-$KAFKA_VERSION/libs}"

# NOTIFGUARD_KAFKA_SECURE=1: the secured broker (secure.sh): a SASL_SSL client listener
# (SCRAM users made at format time), an mTLS listener, the StandardAuthorizer. Its own
# variables for ports and data dir, so that both brokers run side by side.
KAFKA_SECURE="${NOTIFGUARD_KAFKA_SECURE:-0}"
if [[ "$KAFKA_SECURE" == 1 ]]; then
    KAFKA_DATA="${NOTIFGUARD_KAFKA_SECURE_DATA:-$NOTIFGUARD_CACHE/kafka-data-secure}"
    KAFKA_PORT="${KAFKA_SECURE_PORT:-19094}"
    KAFKA_CONTROLLER_PORT="${KAFKA_SECURE_CONTROLLER_PORT:-19095}"
    KAFKA_MTLS_PORT="${KAFKA_MTLS_PORT:-19096}"
else
    KAFKA_DATA="${NOTIFGUARD_KAFKA_DATA:-$NOTIFGUARD_CACHE/kafka-data}"
    KAFKA_PORT="${KAFKA_PORT:-19092}"
    KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
fi

KAFKA_HOST="${KAFKA_HOST:-127.0.0.1}"
KAFKA_BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"
# Where the secured broker keeps its CA, certificates and the SCRAM users' passwords.
KAFKA_SECRETS_DIR="$KAFKA_DATA/secrets"

KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"

KAFKA_PID_FILE="$KAFKA_DATA/broker.pid"
KAFKA_LOG_DIR="$KAFKA_DATA/logs"          # log4j output (server.log, stdout.log)
KAFKA_STORAGE_DIR="$KAFKA_DATA/kraft"     # log.dirs: topic partitions + __cluster_metadata
KAFKA_CONFIG="$KAFKA_DATA/server.properties"

# Prints the pid from the pid file if that process is alive and is a Kafka broker.
kafka_running_pid() {
    local pid
    [[ -f "$KAFKA_PID_FILE" ]] || return 1
    pid="$(cat "$KAFKA_PID_FILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'kafka\.Kafka' || return 1
    echo "$pid"
}
