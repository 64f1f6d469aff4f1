//! systemd's notification protocol (sd_notify): `READY=1` once the API listens,
//! `STATUS=` after each, `WATCHDOG=1` from the loop's side while it runs. Without
//! `NOTIFY_SOCKET` (not started by systemd) nothing is sent.

use std::os::unix::net::UnixDatagram;

fn send(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    // `@name`: a socket in the abstract namespace.
    let _ = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| sock.send_to_addr(message.as_bytes(), &addr))
        }
        None => sock.send_to(message.as_bytes(), &path),
    };
}

/// The service is up.
pub(crate) fn ready() {
    send("READY=1");
}

/// What the service does now (`systemctl status` shows it).
pub(crate) fn status(text: &str) {
    let line: String = text.chars().filter(|c| *c != '\n').take(200).collect();
    send(&format!("STATUS={line}"));
}

/// The loop is alive.
pub(crate) fn watchdog() {
    send("WATCHDOG=1");
}

/// Half the watchdog interval systemd asked for, if it asked.
pub(crate) fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| std::time::Duration::from_micros(usec / 2))
}
