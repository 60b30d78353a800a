#!/bin/sh
# Add a broker account, or give an existing one a new password, and print the password.
#
#   mosquitto/add-device.sh meter meter-001       user "meters/meter-001"
#   mosquitto/add-device.sh vehicle vehicle-001   user "vehicles/vehicle-001"
#   mosquitto/add-device.sh collector             user "collector" (reads every reading), in
#                                                 passwd-collector: the collector's listener
#   mosquitto/add-device.sh gateway               user "gateway" (publishes for any device)
#   mosquitto/add-device.sh --bulk < devices.txt  one "meter <id>" / "vehicle <id>" per line;
#                                                 prints "user password" per line
#
# PASSWD_FILE: the devices' password file (default: passwd next to this script; created if
# missing); COLLECTOR_PASSWD_FILE: the collector's (default: passwd-collector beside it). The
# collector's account lives only there: devices connect to other listeners than the
# collector (listeners.d/listeners.conf), and a device's account cannot log in on its.
# PASSWORD: the password to set (default: a random one). Needs mosquitto_passwd (package
# mosquitto, or run it in the broker's container). The broker reads the file at start and
# on SIGHUP (docker compose kill -s HUP mosquitto).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
file=${PASSWD_FILE:-$here/passwd}
collector_file=${COLLECTOR_PASSWD_FILE:-$(dirname "$file")/passwd-collector}

user_for() {
    case "$1" in
        meter|vehicle)
            id=${2:-}
            if ! printf '%s' "$id" | grep -Eq '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'; then
                echo "add-device.sh: invalid $1 id '$id' (1-64 of A-Z a-z 0-9 . _ : -)" >&2
                exit 2
            fi
            echo "${1}s/$id" ;;
        collector|gateway) echo "$1" ;;
        *) echo "add-device.sh: unknown kind '$1' (meter, vehicle, collector, gateway)" >&2
           exit 2 ;;
    esac
}

new_password() { head -c 18 /dev/urandom | base64 | tr -d '/+='; }

for f in "$file" "$collector_file"; do
    [ -f "$f" ] || { touch "$f"; chmod 640 "$f"; }
done

if [ "${1:-}" = "--bulk" ]; then
    # mosquitto_passwd hashes a whole file of "user:password" lines at once (-U); done on a
    # file of the new accounts only, then appended (-U would hash hashed lines again).
    plain=$(mktemp)
    trap 'rm -f "$plain"' EXIT
    while read -r kind id; do
        [ -n "$kind" ] || continue
        user=$(user_for "$kind" "$id")
        [ "$user" != collector ] || { echo "add-device.sh: add the collector on its own" >&2; exit 2; }
        password=${PASSWORD:-$(new_password)}
        sed -i "\#^$user:#d" "$file"
        printf '%s:%s\n' "$user" "$password" >> "$plain"
        printf '%s %s\n' "$user" "$password"
    done
    mosquitto_passwd -U "$plain"
    cat "$plain" >> "$file"
    exit 0
fi

[ $# -ge 1 ] || { sed -n '2,20s/^# \{0,1\}//p' "$0"; exit 2; }
user=$(user_for "$@")
password=${PASSWORD:-$(new_password)}
[ "$user" = collector ] && file=$collector_file
mosquitto_passwd -b "$file" "$user" "$password"
printf '%s %s\n' "$user" "$password"
