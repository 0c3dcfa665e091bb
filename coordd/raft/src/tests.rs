//! Unit tests that need the crate's private types.

use bytes::Bytes;
use openraft::testing::{StoreBuilder, Suite};

use crate::applier::{Applier, ApplierError, LogEntry};
use crate::log_store::MemLogStore;
use crate::state_machine::StateMachine;
use crate::types::{StorageError, TypeConfig};

/// An applier that keeps the applied entries as its state; the image is their count.
#[derive(Default)]
struct CountingApplier {
    applied: u64,
}

impl Applier for CountingApplier {
    async fn apply(&mut self, entries: Vec<LogEntry>) -> Result<Vec<Bytes>, ApplierError> {
        self.applied += entries.len() as u64;
        Ok(entries.iter().map(|_| Bytes::new()).collect())
    }

    async fn snapshot_image(&mut self) -> Result<Bytes, ApplierError> {
        Ok(Bytes::from(self.applied.to_be_bytes().to_vec()))
    }

    async fn install_image(&mut self, _last_index: u64, image: Bytes) -> Result<(), ApplierError> {
        let b: [u8; 8] = image[..]
            .try_into()
            .map_err(|_| ApplierError(format!("bad image of {} bytes", image.len())))?;
        self.applied = u64::from_be_bytes(b);
        Ok(())
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, MemLogStore, StateMachine<CountingApplier>> for Builder {
    async fn build(
        &self,
    ) -> Result<((), MemLogStore, StateMachine<CountingApplier>), StorageError> {
        Ok((
            (),
            MemLogStore::new(),
            StateMachine::new(CountingApplier::default()),
        ))
    }
}

/// openraft's own conformance suite for a log store + state machine pair (it makes its own
/// runtime, so this is a plain test).
#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}
