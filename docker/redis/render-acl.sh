#!/bin/sh
# render-acl.sh TEMPLATE PASSWORD_FILE: docker/redis/users.acl as redis-server's
# --aclfile reads it, on standard output. Redis's ACL files take no comments and one line
# per user; the template has both for readers (see its head). The password is written as
# its SHA-256 (`#<hex>`), never in clear; its file's trailing newline is not part of it.
set -eu
template=$1
password=$(cat "$2")
if [ -z "$password" ]; then
    echo "render-acl.sh: $2 is empty: the cashreceipt user needs a password" >&2
    exit 1
fi
hash=$(printf '%s' "$password" | sha256sum | cut -d ' ' -f 1)
awk -v hash="$hash" '
    /^#/ || /^[[:space:]]*$/ { next }
    /^[[:space:]]/ { sub(/^[[:space:]]+/, " "); line = line $0; next }
    { if (line != "") print line; line = $0 }
    END { if (line != "") print line }
' "$template" | sed "s/@CASHRECEIPT_PASSWORD_SHA256@/$hash/"
