//! The JSON records agents and routers read from the coordination service
//! (proxy/src/records.rs, `switchyard_proxy::records`): the input is a znode's value, read as every record type.
//!
//! Properties: nothing panics; whatever decodes encodes (with `"v": 1`) to bytes that decode
//! to an equal value; an LSN in PostgreSQL's text form that parses prints back to text that
//! parses to the same LSN.

#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;

// switchyard-proxy's own `records` module (and the `namespace` module it checks names with),
// compiled from its source files. Depending on the whole crate would put the agent's and the
// router's dependencies (tokio-postgres, deadpool, clap, tracing-subscriber, ...) into the
// instrumented build and about double its time in CI, for code this target never runs. If
// records.rs ever uses another module of the crate, this build fails and says so.
#[allow(dead_code)]
#[path = "../../proxy/src/namespace.rs"]
mod namespace;
#[allow(dead_code)]
#[path = "../../proxy/src/records.rs"]
mod records;

use records::{
    decode, encode, ClusterConfig, InitializeRecord, LeaderRecord, Lsn, MemberRecord, Record,
    SwitchoverRequest, SyncRecord, RECORD_BYTES_MAX,
};

fn round_trip<T: Record + PartialEq + Debug>(data: &[u8]) {
    let Ok(record) = decode::<T>(data) else {
        return;
    };
    let bytes = encode(&record);
    // Fields the input left out come back with their defaults, so a value just under the
    // limit may re-encode over it; that is the size check, not a decoding property.
    if bytes.len() > RECORD_BYTES_MAX {
        return;
    }
    match decode::<T>(&bytes) {
        Ok(again) => assert_eq!(again, record, "{} record does not round-trip", T::KIND),
        Err(e) => panic!(
            "{} record {record:?} re-encoded as {:?} does not decode: {e}",
            T::KIND,
            String::from_utf8_lossy(&bytes)
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<LeaderRecord>(data);
    round_trip::<MemberRecord>(data);
    round_trip::<ClusterConfig>(data);
    round_trip::<SyncRecord>(data);
    round_trip::<InitializeRecord>(data);
    round_trip::<SwitchoverRequest>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(lsn) = text.parse::<Lsn>() {
            assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        }
    }
});
