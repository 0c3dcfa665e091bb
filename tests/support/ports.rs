//! Ports for the servers the tests and benches start.
//!
//! A port the kernel picks for `bind(0)` comes from its ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`, 32768-60999 by default), the range every
//! outgoing connection takes its source port from: between the check and the server's
//! own bind, a client connection of a test running beside it could take that port, and
//! the server then fails to start. The ports here come from below that range, where only
//! listeners bind, in a sequence that starts at a place drawn from the process id (test
//! processes running at once start far apart); each is checked free by binding it on
//! the address it is for. Consecutive calls in one process never return the same port
//! (until the sequence wraps around, after `PORT_LAST - PORT_FIRST` ports).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// First port handed out: above the well-known and most commonly registered ports.
const PORT_FIRST: u16 = 20_000;
/// Last port handed out: below the kernel's default ephemeral range (32768).
const PORT_LAST: u16 = 32_000;
/// Ports tried for one call before giving up (all of them taken means something else is
/// wrong).
const ATTEMPTS_MAX: u32 = 2_000;
/// Not seeded yet.
const UNSEEDED: u32 = u32::MAX;

static NEXT: AtomicU32 = AtomicU32::new(UNSEEDED);

fn next_candidate() -> u16 {
    let span = u32::from(PORT_LAST - PORT_FIRST) + 1;
    // Knuth's multiplicative hash spreads neighbouring pids over the range.
    let seed = std::process::id().wrapping_mul(2_654_435_761) % span;
    let _ = NEXT.compare_exchange(UNSEEDED, seed, Ordering::Relaxed, Ordering::Relaxed);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    PORT_FIRST + u16::try_from(n % span).expect("below the span")
}

/// An address on `ip` whose port was free a moment ago and is outside the ephemeral
/// range (see the module's doc).
pub fn free_addr(ip: Ipv4Addr) -> SocketAddr {
    for _ in 0..ATTEMPTS_MAX {
        let addr = SocketAddr::from((ip, next_candidate()));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port on {ip} in {PORT_FIRST}-{PORT_LAST} after {ATTEMPTS_MAX} tries");
}

/// A port on 127.0.0.1, as [`free_addr`].
pub fn free_port() -> u16 {
    free_addr(Ipv4Addr::LOCALHOST).port()
}
