//! Watch registrations: one-shot data / exist / child watches, persistent and
//! persistent-recursive watches, keyed by session.
