#!/usr/bin/env bash
# Fetches the jars of the pinned Apache Kafka broker (pom.xml) from Maven Central into
#   ${NOTIFGUARD_CACHE:-$HOME/.cache/notifguard}/kafka-<version>/libs
# Idempotent: when the marker file there matches this pom.xml and version, it does
# not touch the network. Prints the libs directory.
# Usage: deploy/kafka/fetch.sh
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

marker="$KAFKA_LIBS/.notifguard-fetched"
want="kafka=$KAFKA_VERSION pom=$(sha256sum "$KAFKA_DEPLOY_DIR/pom.xml" | cut -c1-16)"

if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
    echo "kafka $KAFKA_VERSION libs: $KAFKA_LIBS (cached)"
    exit 0
fi

command -v mvn >/dev/null 2>&1 || { echo "fetch.sh: mvn not found (apt-get install maven)" >&2; exit 1; }
command -v java >/dev/null 2>&1 || { echo "fetch.sh: java not found (need Java 17+)" >&2; exit 1; }

parent="$(dirname "$KAFKA_LIBS")"
mkdir -p "$parent"
tmp="$(mktemp -d "$parent/.libs.tmp.XXXXXX")"
log="$(mktemp)"
trap 'rm -rf "$tmp" "$log"' EXIT

if ! mvn -B -q -f "$KAFKA_DEPLOY_DIR/pom.xml" \
        -Dkafka.version="$KAFKA_VERSION" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >"$log" 2>&1; then
    cat "$log" >&2
    echo "fetch.sh: mvn copy-dependencies failed for kafka $KAFKA_VERSION" >&2
    exit 1
fi

for jar in "kafka_2.13-$KAFKA_VERSION.jar" "kafka-clients-$KAFKA_VERSION.jar" "log4j-slf4j-impl-"; do
    compgen -G "$tmp/$jar*" >/dev/null || { echo "fetch.sh: $jar missing after fetch" >&2; exit 1; }
done

echo "$want" >"$tmp/.notifguard-fetched"
rm -rf "$KAFKA_LIBS"
mv "$tmp" "$KAFKA_LIBS"
echo "kafka $KAFKA_VERSION libs: $KAFKA_LIBS ($(find "$KAFKA_LIBS" -name "*.jar" | wc -l) jars fetched)"
