# shellcheck shell=bash
# The secured broker's set-up (sourced by start.sh when NOTIFGUARD_KAFKA_SECURE=1):
# a test CA and certificates (openssl), random SCRAM passwords, the listener and
# authorizer settings. Everything lives in $KAFKA_SECRETS_DIR (mode 700) and is
# made once per data dir: stop.sh --wipe makes new ones.
#
#   ca.pem, ca.key            the test CA (the truststore of broker and clients)
#   untrusted-ca.pem          a CA that signed nothing the broker shows (the untrusted-CA test)
#   broker.pem                the broker's key and certificate (SAN IP:$KAFKA_HOST only)
#   <name>.crt, <name>.key    client certificates, CN=<name>: notifguard-ping (start.sh's
#                             readiness check) and notifguard-mtls (the mTLS listener's tests)
#   <user>.password           the SCRAM-SHA-512 users: admin (the only super user; also the
#                             broker's own inter-broker and controller identity), worker,
#                             forwarder, capture, replay, check: no ACLs until granted
#
# Listeners: SASL_SSL on $KAFKA_PORT (SCRAM-SHA-256/512), SSL with client certificates
# on $KAFKA_MTLS_PORT (principal: the certificate's CN), the controller on
# $KAFKA_CONTROLLER_PORT (SASL_PLAINTEXT, PLAIN, admin only, loopback).

KAFKA_SCRAM_USERS=(admin worker forwarder capture replay check)
KAFKA_CLIENT_CERTS=(notifguard-ping notifguard-mtls)

# Makes the CA, certificates and passwords that do not exist yet.
secure_make_secrets() {
    local s="$KAFKA_SECRETS_DIR" name
    command -v openssl >/dev/null 2>&1 || die "openssl not found (apt-get install openssl)"
    mkdir -p "$s" && chmod 700 "$s"
    (
        umask 077
        cd "$s"
        if [[ ! -f ca.pem ]]; then
            openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
                -subj "/CN=notifguard-test-ca" 2>/dev/null
            openssl req -x509 -newkey rsa:2048 -nodes -keyout untrusted-ca.key -out untrusted-ca.pem \
                -days 3650 -subj "/CN=notifguard-untrusted-ca" 2>/dev/null
            rm -f broker.pem
        fi
        if [[ ! -f broker.pem ]]; then
            secure_sign broker "notifguard-broker" "subjectAltName=IP:$KAFKA_HOST"
            cat broker.key broker.crt >broker.pem
        fi
        for name in "${KAFKA_CLIENT_CERTS[@]}"; do
            [[ -f "$name.crt" ]] || secure_sign "$name" "$name" "extendedKeyUsage=clientAuth"
        done
        for name in "${KAFKA_SCRAM_USERS[@]}"; do
            [[ -f "$name.password" ]] || openssl rand -hex 24 >"$name.password"
        done
    ) || die "could not make the test certificates in $s"
}

# secure_sign NAME CN EXTENSION: NAME.key and NAME.crt, signed by the test CA.
secure_sign() {
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.crt" -days 3650 \
        -extfile <(printf '%s\n' "$3") 2>/dev/null
    rm -f "$1.csr"
}

secure_password() { cat "$KAFKA_SECRETS_DIR/$1.password"; }

# The format arguments that create the SCRAM users (with the metadata, before the first start).
secure_format_args() {
    local name
    for name in "${KAFKA_SCRAM_USERS[@]}"; do
        printf '%s\n' --add-scram "SCRAM-SHA-512=[name=$name,password=$(secure_password "$name")]"
    done
}

# The listener, TLS, SASL and authorizer settings of server.properties.
secure_properties() {
    local s="$KAFKA_SECRETS_DIR" admin
    admin="$(secure_password admin)"
    cat <<PROPS
listeners=SASL_SSL://$KAFKA_HOST:$KAFKA_PORT,MTLS://$KAFKA_HOST:$KAFKA_MTLS_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=SASL_SSL://$KAFKA_HOST:$KAFKA_PORT,MTLS://$KAFKA_HOST:$KAFKA_MTLS_PORT
listener.security.protocol.map=SASL_SSL:SASL_SSL,MTLS:SSL,CONTROLLER:SASL_PLAINTEXT
inter.broker.listener.name=SASL_SSL
controller.listener.names=CONTROLLER
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$admin" user_admin="$admin";
listener.name.mtls.ssl.client.auth=required
ssl.keystore.type=PEM
ssl.keystore.location=$s/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$s/ca.pem
ssl.endpoint.identification.algorithm=https
ssl.principal.mapping.rules=RULE:^CN=([A-Za-z0-9._-]+)\$/\$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin
allow.everyone.if.no.acl.found=false
PROPS
}
