//! repo_outils: placeholder until its issue lands.
