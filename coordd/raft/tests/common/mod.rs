//! The test applier shared by the cluster tests: applies payloads in order, checks the
//! applier contract (consecutive indexes), and snapshots the payload list.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use coordd_raft::{Applier, ApplierError, EntryData, LogEntry};

/// What a test applier saw. Shared between the applier (inside the member) and the test.
#[derive(Default, Debug)]
pub struct AppState {
    /// The state: payload entries applied, in order, with their index.
    pub payloads: Vec<(u64, Bytes)>,
    /// Every entry handed to apply, by kind, for checks on blank and membership entries.
    pub blanks: u64,
    pub memberships: u64,
    pub last_index: Option<u64>,
    pub installs: u64,
    /// Fail (as a broken state machine would) when asked to apply this payload.
    pub fail_on: Option<Bytes>,
}

#[derive(Clone, Default)]
pub struct TestApplier(pub Arc<Mutex<AppState>>);

impl TestApplier {
    pub fn state(&self) -> std::sync::MutexGuard<'_, AppState> {
        self.0.lock().unwrap()
    }

    pub fn payloads(&self) -> Vec<(u64, Bytes)> {
        self.state().payloads.clone()
    }
}

pub fn encode(payloads: &[(u64, Bytes)]) -> Bytes {
    let mut out = Vec::new();
    for (i, p) in payloads {
        out.extend_from_slice(&i.to_be_bytes());
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    Bytes::from(out)
}

pub fn decode(mut b: &[u8]) -> Result<Vec<(u64, Bytes)>, ApplierError> {
    let bad = || ApplierError("truncated image".into());
    let mut out = Vec::new();
    while !b.is_empty() {
        let i = u64::from_be_bytes(b.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        let n = u32::from_be_bytes(
            b.get(8..12)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ) as usize;
        let p = b.get(12..12 + n).ok_or_else(bad)?;
        out.push((i, Bytes::copy_from_slice(p)));
        b = &b[12 + n..];
    }
    Ok(out)
}

impl Applier for TestApplier {
    async fn apply(&mut self, entries: Vec<LogEntry>) -> Result<Vec<Bytes>, ApplierError> {
        let mut s = self.state();
        let mut out = Vec::new();
        for e in entries {
            // The contract: consecutive indexes, never one twice.
            let expected = s.last_index.map_or(0, |i| i + 1);
            if e.index != expected {
                return Err(ApplierError(format!(
                    "entry {} applied after {:?}",
                    e.index, s.last_index
                )));
            }
            if matches!(&e.data, EntryData::Payload(p) if s.fail_on.as_ref() == Some(p)) {
                return Err(ApplierError(format!("cannot apply entry {}", e.index)));
            }
            s.last_index = Some(e.index);
            match e.data {
                EntryData::Payload(p) => {
                    out.push(Bytes::from(format!("applied {}", e.index)));
                    s.payloads.push((e.index, p));
                }
                EntryData::Blank => {
                    s.blanks += 1;
                    out.push(Bytes::new());
                }
                EntryData::Membership(_) => {
                    s.memberships += 1;
                    out.push(Bytes::new());
                }
            }
        }
        Ok(out)
    }

    async fn snapshot_image(&mut self) -> Result<Bytes, ApplierError> {
        Ok(encode(&self.state().payloads))
    }

    async fn install_image(&mut self, last_index: u64, image: Bytes) -> Result<(), ApplierError> {
        let payloads = decode(&image)?;
        let mut s = self.state();
        s.payloads = payloads;
        s.last_index = Some(last_index);
        s.installs += 1;
        Ok(())
    }
}
