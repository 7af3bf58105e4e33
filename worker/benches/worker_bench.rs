//! Worker benchmark (filled below).
fn main() {}
