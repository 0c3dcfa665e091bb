//! Unit and model-based tests of the state machine.
