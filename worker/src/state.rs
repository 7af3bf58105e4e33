//! The VM state machine: every phase a VM can be in on this worker and the
//! only transitions allowed between them. The manager asks `next` before
//! changing a VM, so an impossible change is an error, never a silent state.
//!
//! ```text
//!   Creating ──booted──► Running ◄──resumed── Paused
//!      │                   │ └────paused────────►│
//!      │ (create failed:   ▼ died                ▼ died
//!      │  entry removed)  Failed ◄───────────────┘
//!      │                   │
//!      └─────────── delete: Running|Paused|Failed ──► Stopping ──► (removed)
//! ```

use std::fmt;

use crate::dto::VmState;

/// Where one VM is in its life on this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmPhase {
    /// Preparing, spawning, creating or booting; not yet usable.
    Creating,
    Running,
    Paused,
    /// Being deleted: shutdown, process end, file removal in progress.
    Stopping,
    /// Its hypervisor died or misbehaved; only delete is possible.
    Failed,
}

/// What happened to a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEvent {
    Booted,
    Paused,
    Resumed,
    DeleteStarted,
    /// The hypervisor process ended or stopped answering.
    Died,
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} VM cannot be {event}")]
pub struct InvalidTransition {
    pub from: VmPhase,
    pub event: VmEvent,
}

impl VmPhase {
    /// The phase after `event`, or why that cannot happen now.
    pub fn next(self, event: VmEvent) -> Result<VmPhase, InvalidTransition> {
        use VmEvent as E;
        use VmPhase as P;
        match (self, event) {
            (P::Creating, E::Booted) => Ok(P::Running),
            (P::Running, E::Paused) => Ok(P::Paused),
            (P::Paused, E::Resumed) => Ok(P::Running),
            (P::Running | P::Paused | P::Failed, E::DeleteStarted) => Ok(P::Stopping),
            (P::Running | P::Paused | P::Failed, E::Died) => Ok(P::Failed),
            // A process that ends while we delete it is what we asked for.
            (P::Stopping, E::Died) => Ok(P::Stopping),
            (from, event) => Err(InvalidTransition { from, event }),
        }
    }

    /// What clients see.
    pub fn public(self) -> VmState {
        match self {
            VmPhase::Creating => VmState::Creating,
            VmPhase::Running => VmState::Running,
            VmPhase::Paused => VmState::Paused,
            VmPhase::Stopping => VmState::Stopping,
            VmPhase::Failed => VmState::Failed,
        }
    }
}

impl fmt::Display for VmPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmPhase::Creating => "creating",
            VmPhase::Running => "running",
            VmPhase::Paused => "paused",
            VmPhase::Stopping => "stopping",
            VmPhase::Failed => "failed",
        })
    }
}

impl fmt::Display for VmEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmEvent::Booted => "booted",
            VmEvent::Paused => "paused",
            VmEvent::Resumed => "resumed",
            VmEvent::DeleteStarted => "deleted",
            VmEvent::Died => "marked dead",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHASES: [VmPhase; 5] = [
        VmPhase::Creating,
        VmPhase::Running,
        VmPhase::Paused,
        VmPhase::Stopping,
        VmPhase::Failed,
    ];
    const EVENTS: [VmEvent; 5] = [
        VmEvent::Booted,
        VmEvent::Paused,
        VmEvent::Resumed,
        VmEvent::DeleteStarted,
        VmEvent::Died,
    ];

    #[test]
    fn the_whole_transition_table() {
        use VmEvent as E;
        use VmPhase as P;
        let allowed = [
            (P::Creating, E::Booted, P::Running),
            (P::Running, E::Paused, P::Paused),
            (P::Paused, E::Resumed, P::Running),
            (P::Running, E::DeleteStarted, P::Stopping),
            (P::Paused, E::DeleteStarted, P::Stopping),
            (P::Failed, E::DeleteStarted, P::Stopping),
            (P::Running, E::Died, P::Failed),
            (P::Paused, E::Died, P::Failed),
            (P::Failed, E::Died, P::Failed),
            (P::Stopping, E::Died, P::Stopping),
        ];
        for from in PHASES {
            for event in EVENTS {
                let want = allowed
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == event)
                    .map(|(_, _, to)| *to);
                match (from.next(event), want) {
                    (Ok(got), Some(want)) => assert_eq!(got, want, "{from} + {event}"),
                    (Err(e), None) => assert_eq!(e, InvalidTransition { from, event }),
                    (got, want) => panic!("{from} + {event}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn refusals_read_well() {
        let e = VmPhase::Creating.next(VmEvent::DeleteStarted).unwrap_err();
        assert_eq!(e.to_string(), "a creating VM cannot be deleted");
        assert_eq!(VmPhase::Stopping.public(), VmState::Stopping);
    }
}
