//! Fuzzes narinfo parsing (what `nix copy --to` uploads to the cache) and
//! the hash / store path / Nix base32 parsers it is built on.
//!
//! Properties: nothing panics; an accepted narinfo renders to text that
//! parses to the same narinfo; base32 decode → encode gives back the input.
#![no_main]

use cache::hash::{Sha256Hash, StorePathName, is_hash_part};
use cache::narinfo::{Compression, NarInfo};
use cache::nixbase32;
use libfuzzer_sys::fuzz_target;

const STORE_DIR: &str = "/nix/store";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    // The small parsers, fed the whole input (the server calls them on URL
    // path segments and narinfo fields).
    if let Ok(h) = Sha256Hash::parse(text) {
        assert_eq!(Sha256Hash::parse(&h.to_string()), Ok(h));
    }
    if let Ok(d) = nixbase32::decode::<32>(text) {
        assert_eq!(nixbase32::encode(&d), text, "base32 round trip");
    }
    if let Ok(d) = nixbase32::decode::<20>(text) {
        assert_eq!(nixbase32::encode(&d), text, "base32 round trip");
    }
    if let Ok(p) = StorePathName::parse(text) {
        assert!(is_hash_part(p.hash_part()));
    }
    let _ = Compression::from_file_name(text);

    let Ok(ni) = NarInfo::parse(text, STORE_DIR) else {
        return;
    };
    let _ = ni.fingerprint(STORE_DIR);
    let rendered = ni.render(STORE_DIR);
    let again = NarInfo::parse(&rendered, STORE_DIR).expect("a rendered narinfo parses");
    assert_eq!(ni, again, "render → parse changed the narinfo");
});
