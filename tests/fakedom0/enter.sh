# Inside the scripted dom0 (tests/fakedom0): log the session's command, then run it, the fake
# commands of /fakebin first on PATH; an SFTP session gets OpenSSH's sftp-server.
export PATH=/fakebin:/usr/sbin:/usr/bin HOME=/root
cd /root
cmd=${SSH_ORIGINAL_COMMAND-}
if [ "$cmd" = internal-sftp ]; then
    exec /usr/lib/openssh/sftp-server
fi
printf '$ %s\n' "$cmd" >> /fakedom0/log
exec /bin/sh -c "$cmd"
