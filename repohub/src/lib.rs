//! repohub: placeholder until its issue lands.
