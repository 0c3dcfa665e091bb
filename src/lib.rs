//! The root package: end-to-end tests (tests/) and benchmarks (benches/) of the workspace.
