//! ch-sim
fn main() {}
