#!/usr/bin/env bash
# Starts a single-node Apache Kafka broker (KRaft, broker+controller) on 127.0.0.1,
# no Docker: the broker jars come from fetch.sh, the JVM runs in the background.
#
#   deploy/kafka/start.sh        -> prints "kafka ... up: bootstrap 127.0.0.1:19092 ..."
#
# Idempotent: a broker started by this script that still answers is reused.
# Environment (defaults in common.sh): KAFKA_PORT (19092), KAFKA_CONTROLLER_PORT (19093),
# NOTIFGUARD_KAFKA_DATA (data dir), NOTIFGUARD_CACHE, KAFKA_VERSION, KAFKA_HEAP_OPTS,
# KAFKA_START_TIMEOUT (60 s). Logs: <data>/logs/server.log. Stop with stop.sh.
#
#   NOTIFGUARD_KAFKA_SECURE=1 deploy/kafka/start.sh   -> the secured broker (secure.sh): SASL_SSL
#       on 19094 (KAFKA_SECURE_PORT), mTLS on 19096 (KAFKA_MTLS_PORT), controller 19095
#       (KAFKA_SECURE_CONTROLLER_PORT), data <cache>/kafka-data-secure (NOTIFGUARD_KAFKA_SECURE_DATA);
#       CA, certificates and SCRAM passwords in <data>/secrets. stop.sh and status.sh take it too.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

PYTHON="${PYTHON:-python3}"
t0=$SECONDS

if [[ "$KAFKA_SECURE" == 1 ]]; then
    source "$KAFKA_DEPLOY_DIR/secure.sh"
    # Readiness over the mTLS listener, with the ping client's certificate.
    ping_broker() {
        "$PYTHON" "$KAFKA_DEPLOY_DIR/ping.py" "$KAFKA_HOST:$KAFKA_MTLS_PORT" 2 "$KAFKA_SECRETS_DIR/ca.pem" \
            "$KAFKA_SECRETS_DIR/notifguard-ping.crt" "$KAFKA_SECRETS_DIR/notifguard-ping.key"
    }
else
    ping_broker() { "$PYTHON" "$KAFKA_DEPLOY_DIR/ping.py" "$KAFKA_BOOTSTRAP" 2; }
fi

die() { echo "start.sh: $*" >&2; exit 1; }

launched=""  # the pid of a broker this run started, stopped again if it does not come up

# Startup failure: show the broker's errors before exiting.
fail() {
    echo "start.sh: $*" >&2
    if [[ -n "$launched" ]] && process_alive "$launched"; then
        kill -KILL "$launched" 2>/dev/null || true
        echo "start.sh: stopped the broker this run started (pid $launched)" >&2
    fi
    for f in "$KAFKA_LOG_DIR/stdout.log" "$KAFKA_LOG_DIR/server.log"; do
        if [[ -s "$f" ]]; then
            echo "--- last errors in $f" >&2
            grep -E 'ERROR|FATAL|Exception' "$f" | tail -n 15 >&2 || tail -n 15 "$f" >&2
        fi
    done
    echo "(storage left by an incompatible run? reset it: $KAFKA_DEPLOY_DIR/stop.sh --wipe)" >&2
    exit 1
}

# Exit 0 while process $1 runs (a dead child stays a zombie of this shell: kill -0 is not enough).
process_alive() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != Z ]]
}

# Waits until the broker answers, or its process dies, or the timeout passes. Liveness is the
# process itself, not the command line: right after the fork the child is still this shell
# (not yet exec'd into java), which a busy machine shows for a while.
wait_ready() {
    local pid="$1" deadline=$((SECONDS + KAFKA_START_TIMEOUT)) recorded
    while ((SECONDS < deadline)); do
        process_alive "$pid" || fail "broker process $pid exited during startup"
        recorded="$(cat "$KAFKA_PID_FILE" 2>/dev/null || true)"
        [[ "$recorded" == "$pid" ]] \
            || fail "$KAFKA_PID_FILE no longer holds $pid (now: '${recorded:-removed}'): another start.sh or stop.sh uses $KAFKA_DATA at the same time; give each run its own NOTIFGUARD_KAFKA_DATA"
        ping_broker && return 0
        sleep 0.5
    done
    fail "broker (pid $pid) did not answer on $KAFKA_BOOTSTRAP within ${KAFKA_START_TIMEOUT}s"
}

# 1. Reuse a broker this script started earlier.
if pid="$(kafka_running_pid)"; then
    wait_ready "$pid"
    echo "kafka $KAFKA_VERSION already running: bootstrap $KAFKA_BOOTSTRAP (pid $pid, data $KAFKA_DATA)"
    exit 0
fi
rm -f "$KAFKA_PID_FILE"

for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" ${KAFKA_MTLS_PORT:+"$KAFKA_MTLS_PORT"}; do
    if (exec 3<>"/dev/tcp/$KAFKA_HOST/$port") 2>/dev/null; then
        die "port $KAFKA_HOST:$port is already in use by a process not started by this script"
    fi
done

command -v java >/dev/null 2>&1 || die "java not found (need Java 17+)"

# 2. Broker jars (no network when cached).
fetch_out="$("$KAFKA_DEPLOY_DIR/fetch.sh" 2>&1)" || { echo "$fetch_out" >&2; exit 1; }

mkdir -p "$KAFKA_LOG_DIR" "$KAFKA_STORAGE_DIR"

listener_properties() {
    if [[ "$KAFKA_SECURE" == 1 ]]; then
        secure_properties
        return
    fi
    cat <<PROPS
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
PROPS
}
format_args=()
if [[ "$KAFKA_SECURE" == 1 ]]; then
    secure_make_secrets
    mapfile -t format_args < <(secure_format_args)
fi

# 3. Broker config, rewritten on every start so port/env changes apply (secured: it holds
# the admin's password, so only its owner reads it).
(umask 077 && : >"$KAFKA_CONFIG")
cat >"$KAFKA_CONFIG" <<PROPS
# Written by deploy/kafka/start.sh; edits are overwritten on the next start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
$(listener_properties)
log.dirs=$KAFKA_STORAGE_DIR
num.partitions=6
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
# No time-based retention: replays and tests produce records with historic
# event-time timestamps, which time-based retention would delete at once.
# Size-bounded instead (per partition).
log.retention.ms=-1
log.retention.bytes=536870912
log.segment.bytes=67108864
log.retention.check.interval.ms=60000
PROPS

read -r -a heap_opts <<<"$KAFKA_HEAP_OPTS"
JAVA_OPTS=(
    "${heap_opts[@]}"
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$KAFKA_DEPLOY_DIR/log4j2.xml"
    "-Dkafka.logs.dir=$KAFKA_LOG_DIR"
    -cp "$KAFKA_LIBS/*"
)

# 4. Format KRaft storage once (meta.properties marks a formatted log dir).
if [[ ! -f "$KAFKA_STORAGE_DIR/meta.properties" ]]; then
    # Same form as `kafka-storage random-uuid`: 16 random bytes, URL-safe base64, no padding.
    cluster_id="$("$PYTHON" -c 'import base64, uuid
while (u := base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()).startswith("-"):
    pass
print(u)')"
    java "${JAVA_OPTS[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_CONFIG" "${format_args[@]}" \
        >"$KAFKA_LOG_DIR/format.log" 2>&1 \
        || { cat "$KAFKA_LOG_DIR/format.log" >&2; fail "StorageTool format failed"; }
    echo "$KAFKA_VERSION" >"$KAFKA_DATA/formatted-by-kafka-version"
fi

# 5. Start the broker detached from this shell (own session, no tty, output to files).
setsid java "${JAVA_OPTS[@]}" -Dkafka.broker.tag=notifguard kafka.Kafka "$KAFKA_CONFIG" \
    </dev/null >"$KAFKA_LOG_DIR/stdout.log" 2>&1 &
pid=$!
launched="$pid"
echo "$pid" >"$KAFKA_PID_FILE"

wait_ready "$pid"
echo "kafka $KAFKA_VERSION up: bootstrap $KAFKA_BOOTSTRAP (pid $pid, data $KAFKA_DATA, $((SECONDS - t0))s)"
