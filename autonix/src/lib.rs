//! autonix: placeholder until its issue lands.
