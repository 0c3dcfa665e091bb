//! Switchyard agent and router (issues 3 and 4).
//!
//! The pure, deterministic core both are built on does no I/O and reads no clock:
//!
//! - [`namespace`]: the znode layout (DESIGN.md section 3).
//!   Invariant: every path it builds is a valid znode path.
//! - [`records`]: the JSON values stored there, versioned with `"v": 1`.
//!   Invariant: decoding never panics and never parses more than 64 KiB.
//! - [`election`]: eligibility, lease fencing, epochs, restart (DESIGN.md section 4).
//!   Invariant: no rule lets a node start or stay primary without holding `leader`
//!   on a valid lease.
//! - [`topology`]: the router's snapshot and routing decision (DESIGN.md section 5).
//!   Invariant: writes go only to a leader in state `primary`; routing takes one
//!   atomic load, no lock and no allocation.
//!
//! With I/O:
//!
//! - [`router`]: the router library (issue 4): watches the cluster, publishes
//!   topology snapshots, hands out pooled connections per endpoint, routes statements
//!   by classification (`router::classify`), reports through the `metrics` facade.
//! - [`agent`]: the agent (issue 3) behind the `switchyard` binary: bootstrap,
//!   election, promotion, fencing, member records; I/O around the rules above.

pub mod agent;
pub mod election;
pub mod namespace;
pub mod pg;
pub mod records;
pub mod router;
pub mod topology;
