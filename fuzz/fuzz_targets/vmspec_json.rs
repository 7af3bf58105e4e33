//! Fuzzes `VmSpec::from_json` (the JSON Nix writes for each VM, read by CI
//! and the CLI) and the typed ids parsed from strings at the edge.
//!
//! Properties: parsing never panics; an accepted spec serialises back to
//! JSON that parses to the same spec, and survives a Cap'n Proto round trip
//! (what CI then sends to the control plane).
#![no_main]

use commands::common_capnp;
use commands::convert::{vm_spec_from_capnp, vm_spec_to_capnp};
use commands::types::{StorePath, VmId, VmName, VmSpec, WorkerId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    // The string newtypes are also parsed straight from CLI arguments and
    // capnp text fields.
    if let Ok(p) = text.parse::<StorePath>() {
        assert!(p.as_str().starts_with(p.store_root()));
        assert_eq!(p.hash_part().len(), 32);
    }
    let _ = text.parse::<VmName>();
    let _ = text.parse::<VmId>();
    let _ = text.parse::<WorkerId>();

    let Ok(spec) = VmSpec::from_json(text) else {
        return;
    };
    let _ = spec.store_roots();
    let json = serde_json::to_string(&spec).expect("an accepted spec serialises");
    let again = VmSpec::from_json(&json).expect("a serialised spec parses");
    assert_eq!(spec, again, "JSON round trip changed the spec");

    let mut msg = capnp::message::Builder::new_default();
    vm_spec_to_capnp(&spec, msg.init_root());
    let r = msg
        .get_root_as_reader::<common_capnp::vm_spec::Reader<'_>>()
        .expect("a built message reads");
    let back = vm_spec_from_capnp(r).expect("a valid spec converts back");
    assert_eq!(spec, back, "capnp round trip changed the spec");
});
