#![allow(dead_code)]
pub mod agent;
pub mod coordd;
pub mod nemesis;
pub mod ports;
pub mod postgres;
pub mod proxy;
pub mod raw;
pub mod router;
pub mod target;
pub mod tls;
pub mod zookeeper;

/// zookeeper-client's connector, after making rustls's process-wide default provider
/// unambiguous. zookeeper-client builds its rustls configs (even for plain connections)
/// from that default; our crates name ring explicitly and zookeeper-client brings
/// rustls's default aws-lc-rs, so with both in the graph and none installed, every
/// zookeeper-client connect would panic.
pub fn zk_connector() -> zookeeper_client::Connector {
    coordd_tls::install_process_default_provider();
    zookeeper_client::Client::connector()
}
