//! Shared code of Procurator's command-line tools (`pcr`, `pcr-test`,
//! `pcr-worker-test`): output formatting and error reporting.

pub mod init;
pub mod inspect;
pub mod master;
pub mod output;
pub mod specs;
