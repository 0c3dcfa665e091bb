//! Coordination benchmark (coordd vs Apache ZooKeeper): being written.
fn main() {}
