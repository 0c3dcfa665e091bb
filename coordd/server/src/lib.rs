//! coordd server library.
