# enforcer %postun: on erase ($1 = 0) remove the runtime state. RPM has no purge: an edited
# /etc/enforcer/enforcer.toml is kept as .rpmsave, and /var/lib/enforcer (the audit store,
# the anti-rollback floor) stays; remove them by hand if wanted, never the audit store
# without archiving it.
if [ "$1" -eq 0 ]; then
    rm -rf /run/enforcer
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
exit 0
