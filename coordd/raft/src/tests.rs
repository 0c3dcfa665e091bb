//! Unit tests that need the crate's private types.
