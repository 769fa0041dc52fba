//! Telling systemd how the agent stands, over the `sd_notify` protocol (only when systemd
//! started the agent with `NOTIFY_SOCKET` set, as `Type=notify` does): `READY=1` once the
//! policy is in force and every hook is attached, `STATUS=` after each reload,
//! `STOPPING=1`, and watchdog keep-alives from the event loop when the unit sets
//! `WatchdogSec=`. A message that cannot be sent is logged; the agent goes on enforcing.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "cannot tell systemd (NOTIFY_SOCKET) how the agent stands");
    }
}

/// The agent enforces: the service manager may start what depends on it.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// What the agent is doing now, for `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The agent is stopping (enforcement stays in place).
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping; the kernel programs keep enforcing"),
    ]);
}

/// How often to send keep-alives: half the unit's `WatchdogSec=`, when it set one.
pub fn keep_alive_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// The event loop still turns.
pub fn keep_alive() {
    send(&[NotifyState::Watchdog]);
}
