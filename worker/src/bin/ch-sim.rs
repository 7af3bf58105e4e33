//! `ch-sim`: a cloud-hypervisor stand-in for tests and scale runs. It takes
//! CH's command line, serves the REST API the worker uses on CH's unix
//! socket with CH v53's status codes, bodies and state rules, simulates a
//! guest, and injects faults on request. Never a dependency of the worker.

#[path = "../sim/mod.rs"]
mod sim;

fn main() -> std::process::ExitCode {
    sim::main()
}
