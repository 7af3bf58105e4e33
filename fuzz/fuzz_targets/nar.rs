//! Fuzzes the streaming NAR parser (`cache::nar::list`), which the cache
//! runs on every uploaded NAR (`verify`, `ls`).
//!
//! Properties: nothing panics, the stack never overflows and memory stays
//! bounded; a NAR that parses has entries with well-formed relative paths.
#![no_main]

use cache::nar::{self, EntryKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = nar::list(data) else {
        return;
    };
    let root = entries.first().expect("a parsed NAR has a root entry");
    assert_eq!(root.path, "");
    for e in &entries[1..] {
        assert!(!e.path.is_empty() && !e.path.starts_with('/') && !e.path.ends_with('/'));
        assert!(
            e.path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
        );
        if let EntryKind::Regular { size, .. } = e.kind {
            assert!(size <= data.len() as u64);
        }
    }
});
