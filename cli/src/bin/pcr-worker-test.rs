//! `pcr-worker-test`: manual calls to one worker over `WorkerClient`, for
//! testing and debugging (production changes go through Git); one function
//! per verb. Human tables by
//! default, `--json` for scripts; any error is one line on stderr and a
//! non-zero exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use cli::output::{self, Table};
use commands::client::{ClientError, WorkerClient};
use commands::convert::RpcFailure;
use commands::rpc;
use commands::telemetry::now_ms;
use commands::types::{Resources, VmId, VmSpec, VmStatus};

#[derive(Debug, Parser)]
#[command(
    name = "pcr-worker-test",
    version,
    about = "Call a Procurator worker directly (testing and debugging)"
)]
struct Args {
    /// The worker's Cap'n Proto address (host:port, what its --listen or
    /// --advertise says; `pcr workers` lists them). `--addr` is the old name.
    #[arg(
        long = "worker",
        alias = "addr",
        global = true,
        env = "PCR_WORKER_ADDR",
        default_value = "127.0.0.1:6000"
    )]
    worker: String,
    /// File holding the token to log in with (else $PCR_TOKEN, else the
    /// file $PCR_TOKEN_FILE names; none is needed on a loopback server
    /// without a token file).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Give up connecting after this many seconds.
    #[arg(long, global = true, default_value_t = 5)]
    connect_timeout_secs: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The worker's id, capacity, allocation, labels and VM count.
    Read,
    /// Every VM on the worker.
    ListVms,
    /// Create a VM (or several) from the vmSpec JSON Nix writes (camelCase).
    CreateVm {
        /// A file with one spec object or a list of them ("-" for stdin).
        #[arg(long)]
        spec: PathBuf,
    },
    /// Stop and remove a VM.
    DeleteVm {
        /// The VM id (`list-vms`, or the ID column of `pcr vms`).
        id: String,
    },
    /// Everything the worker knows about a VM.
    Info {
        /// The VM id (`list-vms`, or the ID column of `pcr vms`).
        id: String,
    },
    /// Pause a running VM (its vCPUs stop; memory is kept).
    Pause {
        /// The VM id (`list-vms`, or the ID column of `pcr vms`).
        id: String,
    },
    /// Resume a paused VM.
    Resume {
        /// The VM id (`list-vms`, or the ID column of `pcr vms`).
        id: String,
    },
    /// The end of a VM's serial console.
    Logs {
        /// The VM id (`list-vms`, or the ID column of `pcr vms`).
        id: String,
        /// How many lines (0: the worker's default).
        #[arg(short = 'n', long, default_value_t = 0)]
        lines: u32,
    },
}

/// Everything that can go wrong, each printed as one line.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Rpc(String),
    #[error("{0}")]
    Worker(RpcFailure),
    #[error("{0}")]
    Input(String),
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Connect(e) => CliError::Rpc(output::error_chain(&e)),
            ClientError::Rpc(e) => CliError::Rpc(format!("RPC failed: {}", e.extra)),
            ClientError::Reply(e) => {
                CliError::Rpc(format!("bad answer from the worker: {}", e.to_message()))
            }
            ClientError::Refused(f) => CliError::Worker(f),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match rpc::block_on_local(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => output::fail(e),
    }
}

fn parse_id(s: &str) -> Result<VmId, CliError> {
    s.parse().map_err(|e| CliError::Input(format!("{e}")))
}

/// Reads one spec or a list of specs; errors name the file and the field.
/// A file without a spec is refused: creating nothing is never what the
/// caller meant.
fn read_specs(path: &std::path::Path) -> Result<Vec<VmSpec>, CliError> {
    let specs =
        cli::specs::read_spec_file(path).map_err(|e| CliError::Input(output::error_chain(&e)))?;
    if specs.is_empty() {
        return Err(CliError::Input(format!(
            "no VMs in {}: nothing to create",
            path.display()
        )));
    }
    Ok(specs)
}

fn vm_table(vms: &[VmStatus]) -> Table {
    let now = now_ms();
    let mut t = Table::new(&[
        "ID", "NAME", "STATE", "HEALTH", "PID", "CPU", "MEMORY", "AGE", "HASH", "ERROR",
    ]);
    for v in vms {
        t.row([
            v.id.to_string(),
            v.name.to_string(),
            v.state.to_string(),
            output::health(v.health),
            v.pid.map_or("-".into(), |p| p.to_string()),
            v.cpu.to_string(),
            format!("{} MiB", v.memory_mb),
            output::age(v.created_at_ms, now),
            output::short_hash(&v.content_hash),
            // Why it failed, else why it is unhealthy.
            output::or_dash(if v.error.is_empty() {
                &v.health_detail
            } else {
                &v.error
            }),
        ]);
    }
    t
}

async fn run(args: &Args) -> Result<(), CliError> {
    // Validate local input before connecting, so bad input fails fast.
    let specs = match &args.command {
        Cmd::CreateVm { spec } => read_specs(spec)?,
        _ => Vec::new(),
    };
    let token = commands::auth::client_token(args.token_file.as_deref())
        .map_err(|e| CliError::Rpc(output::error_chain(&e)))?;
    let w = WorkerClient::connect(
        &args.worker,
        Duration::from_secs(args.connect_timeout_secs),
        &token,
    )
    .await?;
    let json = args.json;
    match &args.command {
        Cmd::Read => read(&w, json).await?,
        Cmd::ListVms => list_vms(&w, json).await?,
        Cmd::CreateVm { .. } => create_vms(&w, &specs, json).await?,
        Cmd::DeleteVm { id } => delete_vm(&w, id, json).await?,
        Cmd::Info { id } => info(&w, id, json).await?,
        Cmd::Pause { id } => pause(&w, id, json).await?,
        Cmd::Resume { id } => resume(&w, id, json).await?,
        Cmd::Logs { id, lines } => logs(&w, id, *lines, json).await?,
    }
    w.close().await;
    Ok(())
}

/// `read`: the worker's id, address, version, capacity and allocation.
async fn read(w: &WorkerClient, json: bool) -> Result<(), CliError> {
    let s = w.read().await?;
    if json {
        output::print_json(&s);
        return Ok(());
    }
    let res = |r: Resources| format!("{} vCPU, {} MiB", r.cpu, r.memory_mb);
    output::print_str(&output::key_values(&[
        ("worker", s.worker_id.to_string()),
        ("address", s.address.clone()),
        ("version", s.version.clone()),
        ("uptime", output::duration_ms(s.uptime_ms)),
        ("capacity", res(s.capacity)),
        ("allocated", res(s.allocated)),
        ("vms", s.vm_count.to_string()),
        ("labels", output::labels(&s.labels)),
        ("run dir", s.run_dir.clone()),
    ]));
    Ok(())
}

/// `list-vms`: every VM on the worker.
async fn list_vms(w: &WorkerClient, json: bool) -> Result<(), CliError> {
    let vms = w.list_vms().await?;
    if json {
        output::print_json(&vms);
    } else if vms.is_empty() {
        output::print_str("No VMs\n");
    } else {
        vm_table(&vms).print();
    }
    Ok(())
}

/// `create-vm`: creates every spec in turn; the ones created are printed
/// even when another failed, and the first refusal is the exit error.
async fn create_vms(w: &WorkerClient, specs: &[VmSpec], json: bool) -> Result<(), CliError> {
    let mut created = Vec::new();
    let mut first_err = None;
    for spec in specs {
        match w.create_vm(spec).await {
            Ok(st) => created.push(st),
            Err(ClientError::Refused(f)) => {
                // With several specs, say which one each error is about.
                let f = if specs.len() > 1 {
                    let f =
                        RpcFailure::new(f.code, format!("creating {}: {}", spec.name(), f.message));
                    eprintln!("error: {f}");
                    f
                } else {
                    f
                };
                first_err.get_or_insert(f);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if json {
        output::print_json(&created);
    } else if !created.is_empty() {
        vm_table(&created).print();
    }
    match first_err {
        Some(f) => Err(CliError::Worker(f)),
        None => Ok(()),
    }
}

/// `delete-vm`: stops and removes one VM.
async fn delete_vm(w: &WorkerClient, id: &str, json: bool) -> Result<(), CliError> {
    w.delete_vm(&parse_id(id)?).await?;
    if json {
        output::print_json(&serde_json::json!({"deleted": id}));
    } else {
        output::print_str(&format!("deleted VM {id}\n"));
    }
    Ok(())
}

/// `info`: spec, status, metrics and the hypervisor's view of one VM.
async fn info(w: &WorkerClient, id: &str, json: bool) -> Result<(), CliError> {
    let d = w.vm_info(&parse_id(id)?).await?;
    if json {
        output::print_json(&d);
        return Ok(());
    }
    let s = &d.status;
    let sp = &d.spec;
    output::print_str(&output::key_values(&[
        ("id", s.id.to_string()),
        ("name", s.name.to_string()),
        ("state", s.state.to_string()),
        ("hypervisor state", output::or_dash(&d.ch_state)),
        ("pid", s.pid.map_or("-".into(), |p| p.to_string())),
        ("error", output::or_dash(&s.error)),
        (
            "health",
            output::health_with_detail(s.health, &s.health_detail),
        ),
        (
            "healthy since",
            s.healthy_since_ms
                .map_or("-".into(), |t| output::age(t, now_ms()) + " ago"),
        ),
        (
            "health check",
            sp.health_check().map_or("-".into(), |c| {
                format!("{:?} within {} ms", c.console_line, c.deadline_ms)
            }),
        ),
        ("age", output::age(s.created_at_ms, now_ms())),
        ("cpu", sp.cpu().to_string()),
        ("memory", format!("{} MiB", sp.memory_mb())),
        ("content hash", sp.content_hash().to_owned()),
        ("toplevel", sp.toplevel().to_string()),
        ("kernel", sp.kernel_path().to_string()),
        (
            "initrd",
            sp.initrd_path().map_or("-".into(), ToString::to_string),
        ),
        (
            "disk image",
            sp.disk_image_path().map_or("-".into(), ToString::to_string),
        ),
        ("cmdline", output::or_dash(sp.cmdline())),
        ("labels", output::labels(sp.labels())),
        ("rss", output::bytes(d.metrics.rss_bytes)),
        ("disk read", output::bytes(d.metrics.disk_read_bytes)),
        ("disk written", output::bytes(d.metrics.disk_write_bytes)),
        (
            "net rx/tx",
            format!(
                "{} / {}",
                output::bytes(d.metrics.net_rx_bytes),
                output::bytes(d.metrics.net_tx_bytes)
            ),
        ),
        (
            "egress dropped",
            format!("{} packets", d.metrics.egress_dropped_packets),
        ),
        ("api socket", d.socket_path.clone()),
        ("serial log", d.serial_log_path.clone()),
    ]));
    Ok(())
}

/// `pause`: pauses a running VM.
async fn pause(w: &WorkerClient, id: &str, json: bool) -> Result<(), CliError> {
    let vm = w.pause_vm(&parse_id(id)?).await?;
    print_state(&vm, json);
    Ok(())
}

/// `resume`: resumes a paused VM.
async fn resume(w: &WorkerClient, id: &str, json: bool) -> Result<(), CliError> {
    let vm = w.resume_vm(&parse_id(id)?).await?;
    print_state(&vm, json);
    Ok(())
}

/// What `pause` and `resume` print: the VM's new state.
fn print_state(vm: &VmStatus, json: bool) {
    if json {
        output::print_json(vm);
    } else {
        output::print_str(&format!("VM {} is {}\n", vm.id, vm.state));
    }
}

/// `logs`: the end of a VM's serial console, one line per line.
async fn logs(w: &WorkerClient, id: &str, lines: u32, json: bool) -> Result<(), CliError> {
    let tail = w.logs(&parse_id(id)?, lines).await?;
    output::print_str(&cli::inspect::render_tail(&tail, json));
    Ok(())
}
