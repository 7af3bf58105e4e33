//! The `Master` service adapter: `MasterApi` (the control plane implements it) served over Cap'n Proto.
