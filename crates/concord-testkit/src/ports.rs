//! Free loopback ports for servers a test starts.

use std::net::TcpListener;

/// Picks `n` distinct free TCP ports on 127.0.0.1 (bind port 0, read it, release it).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// One free TCP port on 127.0.0.1 (see [`free_ports`] for the race this leaves).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}
