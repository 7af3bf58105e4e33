//! control_plane: placeholder until its issue lands.
