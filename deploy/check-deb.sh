#!/usr/bin/env bash
# Builds the Debian package, installs it with dpkg, and checks what an
# operator relies on: the `callwarden` user exists, the config is
# root:callwarden 0640, `check` runs as that user, the unit is installed
# (not enabled or started), and an upgrade script restarts nothing. Then
# purges it. Run as root on a Debian machine (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet
command -v systemd-sysusers >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq systemd >/dev/null; }
cargo deb --locked --quiet
deb=$(ls -t target/debian/callwarden_*.deb | head -1)
echo "built $deb"

fail() { echo "check-deb: $*" >&2; exit 1; }
# The listing is read whole first: `dpkg-deb -c | grep -q` fails under
# pipefail whenever grep finds the line and exits while tar still writes
# (SIGPIPE), which made this check fail now and then.
listing=$(dpkg-deb -c "$deb")
grep -q 'usr/lib/sysusers.d/callwarden.conf' <<<"$listing" || fail "the sysusers file is not in the package"
scripts=$(mktemp -d)
trap 'rm -rf "$scripts"; dpkg --purge callwarden >/dev/null 2>&1 || true' EXIT
dpkg-deb -e "$deb" "$scripts"
if grep -q 'try-restart\|deb-systemd-invoke restart' "$scripts/postinst"; then
    fail "postinst restarts the service on upgrade"
fi

dpkg -i "$deb"
getent passwd callwarden >/dev/null || fail "no callwarden user"
owner=$(stat -c '%U:%G %a' /etc/callwarden/callwarden.yaml)
[ "$owner" = "root:callwarden 640" ] || fail "/etc/callwarden/callwarden.yaml is $owner, not root:callwarden 640"
[ -f /usr/lib/systemd/system/callwarden.service ] || [ -f /lib/systemd/system/callwarden.service ] \
    || fail "the unit is not installed"
# The example config names its secrets by environment variable.
runuser -u callwarden -- env \
    TRTC_SECRET_KEY=example-secret-value-for-tests \
    ACS_ACCESS_KEY=ZXhhbXBsZS1hY3Mta2V5LWZvci10ZXN0cw== \
    TRTC_CALLBACK_KEY=example-callback-key \
    CALLWARDEN_API_TOKEN=example-api-token-for-tests \
    CALLWARDEN_CHECKPOINT_KEY=example-checkpoint-key \
    ACS_CALLBACK_SECRET=example-acs-callback-secret \
    CALLWARDEN_NOTIFY_SECRET=example-notify-secret \
    callwarden --config /etc/callwarden/callwarden.yaml check >/dev/null \
    || fail "check does not run as the callwarden user"
dpkg --purge callwarden
[ ! -e /etc/callwarden/callwarden.yaml ] || fail "purge left the config"
echo "check-deb: the package installs, runs check as callwarden, and purges cleanly"
