#![allow(dead_code)]
pub mod coordd;
pub mod raw;
pub mod zookeeper;
