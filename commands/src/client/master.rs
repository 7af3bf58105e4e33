//! The typed `Master` client (moved here from `control_plane::client`).
