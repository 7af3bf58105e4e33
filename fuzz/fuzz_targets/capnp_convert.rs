//! Fuzzes the Cap'n Proto readers → domain types conversions in
//! `commands::convert`, on messages read with the RPC layer's limits
//! (`rpc::reader_options()`).
//!
//! Messages are read from an aligned copy with `read_message_from_flat_slice`
//! rather than the stream reader the RPC layer uses: the stream reader
//! allocates and zero-fills the size a segment table claims (up to the
//! traversal limit, `rpc::MAX_MESSAGE_WORDS`) before reading, which would make most runs
//! about allocation and cap the fuzzer at ~200 runs/s. Segment-table
//! parsing is capnp's; what is fuzzed here is our conversions.
//!
//! Input: the first byte picks the root struct (VmSpec, publishState's
//! params, Assignment, VmStatus, WorkerStatus, VmInfo, LogTail, Error,
//! Result(PublishOutcome)); the rest is a serialised message.
//! Properties: nothing panics; whatever converts also survives
//! domain → capnp → domain unchanged.
#![no_main]

use commands::convert::{self, ConvertError};
use commands::rpc::reader_options;
use commands::types::WorkerId;
use commands::{common_capnp, master_capnp, worker_capnp};
use libfuzzer_sys::fuzz_target;

/// Converts a message of capnp type `O` to its domain value, writes that
/// back to capnp and converts again, and asserts the value survived
/// (`what` names it in the panic).
fn round_trip<O, T>(
    what: &str,
    reader: O::Reader<'_>,
    from: impl for<'a> Fn(O::Reader<'a>) -> Result<T, ConvertError>,
    to: impl for<'a> Fn(&T, O::Builder<'a>),
) -> Result<(), ConvertError>
where
    O: capnp::traits::Owned,
    T: PartialEq + std::fmt::Debug,
{
    let value = from(reader)?;
    let mut b = capnp::message::Builder::new_default();
    to(&value, b.init_root());
    let back = from(b.get_root_as_reader()?)?;
    assert_eq!(value, back, "{what} capnp round trip");
    Ok(())
}

fn run<S: capnp::message::ReaderSegments>(
    kind: u8,
    msg: &capnp::message::Reader<S>,
) -> Result<(), ConvertError> {
    match kind % 9 {
        0 => round_trip::<common_capnp::vm_spec::Owned, _>(
            "VmSpec",
            msg.get_root()?,
            convert::vm_spec_from_capnp,
            convert::vm_spec_to_capnp,
        )?,
        1 => {
            // What the control plane's publishState reads from its params.
            let p: master_capnp::master::publish_state_params::Reader<'_> = msg.get_root()?;
            let _commit = convert::text(p.get_commit())?;
            let _intent = convert::text(p.get_intent_hash())?;
            let _generation = p.get_generation();
            let specs = convert::vm_specs_from_capnp(p.get_vm_specs()?)?;
            let mut b = capnp::message::Builder::new_default();
            let mut list = b
                .init_root::<master_capnp::master::publish_state_params::Builder<'_>>()
                .init_vm_specs(specs.len() as u32);
            for (i, s) in specs.iter().enumerate() {
                convert::vm_spec_to_capnp(s, list.reborrow().get(i as u32));
            }
            let r: master_capnp::master::publish_state_params::Reader<'_> =
                b.get_root_as_reader()?;
            let back = convert::vm_specs_from_capnp(r.get_vm_specs()?)?;
            assert_eq!(specs, back, "publishState specs round trip");
        }
        2 => {
            // What a worker reads from its assignment.
            let a: master_capnp::assignment::Reader<'_> = msg.get_root()?;
            let _worker: WorkerId = convert::text(a.get_worker_id())?.parse()?;
            let _commit = convert::text(a.get_commit())?;
            let _specs = convert::vm_specs_from_capnp(a.get_vms()?)?;
        }
        3 => round_trip::<common_capnp::vm_status::Owned, _>(
            "VmStatus",
            msg.get_root()?,
            convert::vm_status_from_capnp,
            convert::vm_status_to_capnp,
        )?,
        4 => round_trip::<common_capnp::worker_status::Owned, _>(
            "WorkerStatus",
            msg.get_root()?,
            convert::worker_status_from_capnp,
            convert::worker_status_to_capnp,
        )?,
        5 => {
            // VmMetrics holds an f64 (NaN != NaN), so only the conversion runs.
            let _ = convert::vm_details_from_capnp(
                msg.get_root::<worker_capnp::vm_info::Reader<'_>>()?,
            )?;
        }
        6 => round_trip::<worker_capnp::log_tail::Owned, _>(
            "LogTail",
            msg.get_root()?,
            convert::log_tail_from_capnp,
            convert::log_tail_to_capnp,
        )?,
        7 => round_trip::<common_capnp::error::Owned, _>(
            "Error",
            msg.get_root()?,
            convert::error_from_capnp,
            convert::error_to_capnp,
        )?,
        _ => {
            let r: common_capnp::result::Reader<'_, master_capnp::publish_outcome::Owned> =
                msg.get_root()?;
            if let Ok(ok) = convert::result_from_capnp(r)? {
                // What `MasterClient::publish` reads; the unplaced list is
                // length-checked before it is walked (zero-sized structs
                // cost nothing to send). Then the outcome round-trips.
                round_trip::<master_capnp::publish_outcome::Owned, _>(
                    "PublishOutcome",
                    ok,
                    convert::master::publish_outcome_from_capnp,
                    convert::master::publish_outcome_to_capnp,
                )?;
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let mut words = capnp::Word::allocate_zeroed_vec(bytes.len().div_ceil(8));
    let aligned = &mut capnp::Word::words_to_bytes_mut(&mut words)[..bytes.len()];
    aligned.copy_from_slice(bytes);
    let mut slice: &[u8] = aligned;
    let Ok(msg) = capnp::serialize::read_message_from_flat_slice(&mut slice, reader_options())
    else {
        return;
    };
    let _ = run(kind, &msg);
});
