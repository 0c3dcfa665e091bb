//! Switchyard agent and router: to be built (issues 3 and 4).
