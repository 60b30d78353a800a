#!/bin/sh
# One-time setup for docker-compose.yml, from the repository root:   deploy/compose-setup.sh
#
# Writes what the compose stack needs and git never holds:
#   .env                     COMPOSE_PROJECT_NAME, POSTGRES_PASSWORD, COLLECTOR_MQTT_PASSWORD, GATEWAY_MQTT_PASSWORD,
#                            INGEST_TOKENS, GRAFANA_ADMIN_PASSWORD (random; kept if .env already has them)
#   mosquitto/passwd         the broker account "gateway" (mosquitto/acl)
#   mosquitto/passwd-collector  the broker account "collector" (its own listener, 1884)
#   mosquitto/certs/server.* a self-signed certificate for the TLS listener, unless one is
#                            there already (put your CA-issued one there for production)
#   mosquitto/data/          where the broker's persistence volume is mounted
# Add devices afterwards with mosquitto/add-device.sh (then: docker compose kill -s HUP mosquitto).
# Needs openssl, and mosquitto_passwd (package mosquitto) or docker to run it in the image.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
env_file=${ENV_FILE:-.env}
broker_uid=1883  # the "mosquitto" user of the eclipse-mosquitto image

secret() { head -c 24 /dev/urandom | base64 | tr -d '/+=' | cut -c1-28; }
current() { [ -f "$env_file" ] && sed -n "s/^$1=//p" "$env_file" | tail -n 1; }

touch "$env_file"
chmod 600 "$env_file"
[ -n "$(current COMPOSE_PROJECT_NAME)" ] || echo "COMPOSE_PROJECT_NAME=energy-collector" >> "$env_file"
for name in POSTGRES_PASSWORD COLLECTOR_MQTT_PASSWORD GATEWAY_MQTT_PASSWORD INGEST_TOKENS \
    GRAFANA_ADMIN_PASSWORD; do
    if [ -z "$(current "$name")" ]; then
        printf '%s=%s\n' "$name" "$(secret)" >> "$env_file"
        echo "compose-setup: $name written to $env_file"
    fi
done

add_account() {  # kind, password, the file it goes to (add-device.sh decides; for the log)
    if command -v mosquitto_passwd >/dev/null 2>&1; then
        PASSWORD=$2 mosquitto/add-device.sh "$1" >/dev/null
    else
        docker run --rm -v "$root/mosquitto:/m" -e PASSWD_FILE=/m/passwd -e PASSWORD="$2" \
            -e COLLECTOR_PASSWD_FILE=/m/passwd-collector \
            eclipse-mosquitto:2.0 sh /m/add-device.sh "$1" >/dev/null
    fi
    echo "compose-setup: broker account '$1' set in mosquitto/$3"
}
add_account collector "$(current COLLECTOR_MQTT_PASSWORD)" passwd-collector
add_account gateway "$(current GATEWAY_MQTT_PASSWORD)" passwd

if [ ! -f mosquitto/certs/server.crt ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=mosquitto" \
        -addext "subjectAltName=DNS:mosquitto,DNS:localhost,IP:127.0.0.1" \
        -keyout mosquitto/certs/server.key -out mosquitto/certs/server.crt 2>/dev/null
    echo "compose-setup: self-signed certificate in mosquitto/certs (replace it for production)"
fi

mkdir -p mosquitto/data
# The broker drops to uid 1883 in its container: it must read its password files and key.
# Run this again after adding devices: it puts the ownership back.
secrets="mosquitto/passwd mosquitto/passwd-collector mosquitto/certs/server.key"
# shellcheck disable=SC2086
if chown "$broker_uid:$broker_uid" $secrets 2>/dev/null; then
    chmod 600 $secrets
else
    chmod 644 $secrets
    echo "compose-setup: cannot chown to uid $broker_uid (not root); made the password files and server.key" \
         "world-readable instead: run as root to keep them private" >&2
fi
echo "compose-setup: done. Next: docker compose up -d --build"
