//! ci_service: placeholder until its issue lands.
