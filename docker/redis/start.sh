#!/bin/sh
# The compose Redis's entrypoint: render the ACL (users.acl, with the password from the
# redis_password secret) into a file only redis-server reads, then hand over to the
# image's own entrypoint, which drops root and runs redis-server with our arguments.
set -eu
acl=/tmp/users.acl
umask 077
sh /etc/cashreceipt/render-acl.sh /etc/cashreceipt/users.acl "${REDIS_PASSWORD_FILE:?}" > "$acl"
if [ "$(id -u)" = 0 ]; then
    chown redis:redis "$acl"
fi
exec docker-entrypoint.sh redis-server --aclfile "$acl" "$@"
