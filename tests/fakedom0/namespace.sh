# The scripted dom0's mount namespace (tests/fakedom0), run under `unshare --mount --propagation
# private` and held for as long as the fixture lives: this machine's /usr, /etc and /dev (and the
# Python of fake.py; the lines of $1/fakedom0/mounts) bound read-only into the fake root $1, then
# chrooted there. Each SSH session (the sshd's ForceCommand) enters it with `nsenter --mount
# --root`. Nothing outside the namespace changes; its mounts go with its last process.
set -eu
r=$1
while read -r src dst; do
    mount --bind -o ro "$src" "$r$dst"
done < "$r/fakedom0/mounts"
exec chroot "$r" /usr/bin/sleep infinity
