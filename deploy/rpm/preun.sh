# enforcer %preun: on erase ($1 = 0; not on upgrade) stop the agent if systemd runs it and
# remove the enforcement (`enforcer uninstall`). The audit store stays.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl stop enforcer.service || echo "enforcer: systemctl stop enforcer failed" >&2
    fi
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable enforcer.service >/dev/null 2>&1 || true
    fi
    /usr/bin/enforcer uninstall --config /etc/enforcer/enforcer.toml \
        || echo "enforcer: enforcement could not be removed (above); the package is removed anyway." >&2
fi
exit 0
