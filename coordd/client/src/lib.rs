//! Async client: to be written.
