//! ACL validation and checks: schemes world, auth, digest, ip; the superuser.
