#!/bin/sh
# The flower image's entrypoint. Flower protects itself only as well as its password:
# take it from FLOWER_BASIC_AUTH_FILE (a Docker secret) or FLOWER_BASIC_AUTH, and refuse
# to start without one, with an empty password, or with the example's (change-me, from
# docker/.env.example). Listen on 127.0.0.1 unless FLOWER_ADDRESS says otherwise: the
# compose stack sets 0.0.0.0 inside its network and publishes the port on 127.0.0.1 only.
set -eu

refuse() {
    echo "flower: $*" >&2
    exit 64
}

if [ -n "${FLOWER_BASIC_AUTH_FILE:-}" ]; then
    if [ -n "${FLOWER_BASIC_AUTH:-}" ]; then
        refuse "set FLOWER_BASIC_AUTH or FLOWER_BASIC_AUTH_FILE, not both"
    fi
    if [ ! -r "$FLOWER_BASIC_AUTH_FILE" ]; then
        refuse "FLOWER_BASIC_AUTH_FILE ($FLOWER_BASIC_AUTH_FILE) cannot be read"
    fi
    # $(...) drops the file's trailing newline.
    FLOWER_BASIC_AUTH=$(cat "$FLOWER_BASIC_AUTH_FILE")
fi
if [ -z "${FLOWER_BASIC_AUTH:-}" ]; then
    refuse "no password: set FLOWER_BASIC_AUTH_FILE to a file (a secret) holding user:password"
fi

# Flower takes several user:password pairs, comma-separated: check each. No globbing of
# a password with * in it.
set -f
old_ifs=$IFS
IFS=,
for pair in $FLOWER_BASIC_AUTH; do
    user=${pair%%:*}
    password=${pair#*:}
    if [ "$pair" = "$user" ] || [ -z "$user" ] || [ -z "$password" ]; then
        refuse "FLOWER_BASIC_AUTH must be user:password, with a password"
    fi
    if [ "$password" = "change-me" ]; then
        refuse "refusing the example password of docker/.env.example (change-me): choose your own"
    fi
done
IFS=$old_ifs
set +f

export FLOWER_BASIC_AUTH
export FLOWER_ADDRESS="${FLOWER_ADDRESS:-127.0.0.1}"
unset FLOWER_BASIC_AUTH_FILE
exec "$@"
