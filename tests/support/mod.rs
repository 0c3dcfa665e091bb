#![allow(dead_code)]
pub mod agent;
pub mod coordd;
pub mod nemesis;
pub mod postgres;
pub mod proxy;
pub mod raw;
pub mod router;
pub mod target;
pub mod tls;
pub mod zookeeper;
