//! `worker` binary: flags and env, logging, signals; everything else is
//! `worker::run`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use commands::report::error_chain;
use worker::dto::{Labels, Resources, WorkerId};

#[derive(Parser, Debug)]
#[command(
    name = "worker",
    version,
    about = "Procurator worker: runs VMs as cloud-hypervisor processes"
)]
struct Args {
    /// Address to serve Cap'n Proto on (port 0 picks one).
    #[arg(long, env = "WORKER_LISTEN", default_value = "127.0.0.1:6000")]
    listen: String,
    /// Address reported to clients and the control plane (default: the bound one).
    #[arg(long, env = "WORKER_ADVERTISE")]
    advertise: Option<String>,
    /// The cloud-hypervisor binary (or ch-sim).
    #[arg(long, env = "WORKER_CH_BINARY", default_value = "cloud-hypervisor")]
    ch_binary: PathBuf,
    /// Directory for VM records and CH logs, with `vm/` (API sockets and
    /// disks, the VM user's) and `console/` (serial files and history).
    #[arg(long, env = "WORKER_RUN_DIR", default_value = "/run/procurator/worker")]
    run_dir: PathBuf,
    /// This worker's id (default: the host name).
    #[arg(long, env = "WORKER_ID")]
    worker_id: Option<String>,
    /// vCPUs offered to VMs (default: the host's CPU count).
    #[arg(long, env = "WORKER_CPU")]
    cpu: Option<u32>,
    /// Memory offered to VMs in MiB (default: the host's MemTotal).
    #[arg(long, env = "WORKER_MEMORY_MB")]
    memory_mb: Option<u64>,
    /// A label k=v (repeatable; env: comma-separated).
    #[arg(long = "label", env = "WORKER_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// Where /nix/store paths are found (a store root like `nix copy --to DIR`).
    #[arg(
        long,
        alias = "nix-store-root",
        env = "WORKER_STORE_ROOT",
        default_value = "/"
    )]
    store_root: PathBuf,
    /// Network the VMs on this bridge (it must exist; the host module makes
    /// it): each VM gets a TAP on it, a fixed address in --vm-subnet and
    /// default-deny egress that lets it reach only what its
    /// networkAllowedDomains resolve to. Needs root, `nft` and `ip`.
    /// Without it VMs get no NIC.
    #[arg(long, env = "WORKER_BRIDGE")]
    bridge: Option<String>,
    /// The VM subnet; the bridge has its first address, VMs the others.
    #[arg(long, env = "WORKER_VM_SUBNET", default_value = "10.100.0.0/24")]
    vm_subnet: String,
    /// Prefix of the VMs' TAP names (<prefix><VM id tail>, at most 15 bytes).
    #[arg(long, env = "WORKER_TAP_PREFIX", default_value = "pcrt")]
    tap_prefix: String,
    /// Where the VMs' DNS forwarder listens (default: the bridge address, port 53).
    #[arg(long, env = "WORKER_DNS_LISTEN")]
    dns_listen: Option<std::net::SocketAddr>,
    /// The resolver the forwarder asks (default: the first nameserver of /etc/resolv.conf).
    #[arg(long, env = "WORKER_DNS_UPSTREAM")]
    dns_upstream: Option<std::net::SocketAddr>,
    /// Name of the worker's nftables tables (inet and bridge families).
    #[arg(long, env = "WORKER_NFT_TABLE", default_value = "procurator")]
    nft_table: String,
    /// How each VM's disk is made from its store image: `overlay`, a qcow2
    /// overlay backed by the read-only image (O(1), shares the image's
    /// blocks), or `copy`, a full raw copy (costs the image's size; for
    /// images that must not be shared).
    #[arg(long, env = "WORKER_DISK_MODE", default_value = "overlay")]
    disk_mode: worker::disk::DiskMode,
    /// Bound on each VM's console history file; one rotated file is kept,
    /// so a VM's console takes at most twice this on disk, plus what its
    /// guest prints between two copies (every 250 ms). Output beyond that
    /// is dropped, with a line saying so.
    #[arg(long, env = "WORKER_CONSOLE_HISTORY_BYTES", default_value_t = 1024 * 1024)]
    console_history_bytes: u64,
    /// Run each cloud-hypervisor as this unprivileged user (name or uid),
    /// so a guest that escapes into its hypervisor is not root. The worker
    /// itself stays root: it prepares TAP devices and nftables rules,
    /// pulls into the store and makes each VM's files, handing the VM's
    /// disk, serial file and socket directory to this user.
    #[arg(long, env = "WORKER_VM_USER")]
    vm_user: Option<String>,
    /// The group cloud-hypervisor runs with, the one that may open
    /// /dev/kvm (default: `kvm` if the host has it, else the user's own).
    #[arg(long, env = "WORKER_VM_GROUP", requires = "vm_user")]
    vm_group: Option<String>,
    /// Stop every VM when the worker exits (default: leave them running for adoption).
    #[arg(long, env = "WORKER_STOP_VMS_ON_EXIT")]
    stop_vms_on_exit: bool,
    /// How long a new cloud-hypervisor may take to open its API socket.
    #[arg(long, env = "WORKER_SOCKET_TIMEOUT_MS", default_value_t = 5000)]
    socket_timeout_ms: u64,
    /// How long a delete waits for the guest's graceful shutdown.
    #[arg(long, env = "WORKER_SHUTDOWN_TIMEOUT_MS", default_value_t = 3000)]
    shutdown_timeout_ms: u64,
    /// Bound on each call to a cloud-hypervisor API.
    #[arg(long, env = "WORKER_API_TIMEOUT_MS", default_value_t = 10_000)]
    api_timeout_ms: u64,
    /// Binary cache to pull missing closures from (`nix copy --from`).
    #[arg(long, alias = "cache-url", env = "WORKER_CLOSURE_SOURCE")]
    closure_source: Option<String>,
    /// The cache's public key (`name:base64`); pulled paths must carry its signature.
    #[arg(long, env = "WORKER_CACHE_PUBLIC_KEY")]
    cache_public_key: Option<String>,
    /// Reconcile with this control plane ("host:port"); without it the worker stays manual.
    #[arg(long, env = "WORKER_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// How often observed state is pushed to the control plane when nothing changes.
    #[arg(long, env = "WORKER_HEARTBEAT_INTERVAL_MS", default_value_t = 1000)]
    heartbeat_interval_ms: u64,
    /// Token file of this worker's own RPC: `admin <token>` and `reader
    /// <token>` lines. Required unless --insecure-no-auth.
    #[arg(long, env = "WORKER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Check no tokens on this worker's own RPC: every caller is admin. For
    /// development only: only on a loopback address, and logged as a
    /// warning at startup.
    #[arg(long, env = "WORKER_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
    /// File holding the token this worker presents to the control plane
    /// (a `worker:<this id>` token in the control plane's token file).
    #[arg(long, env = "WORKER_CLUSTER_TOKEN_FILE")]
    cluster_token_file: Option<PathBuf>,
    /// Serve Prometheus metrics (`GET /metrics`: VMs by state, create and
    /// delete latency, CH API errors, closure pulls, per-VM CPU, RSS, disk,
    /// network and egress drops) on this address. Off unless given; given
    /// without a value it listens on loopback 127.0.0.1:9465. The endpoint
    /// needs no token, so only name a non-loopback address on purpose.
    #[arg(long, env = "WORKER_METRICS_LISTEN", num_args = 0..=1, default_missing_value = "127.0.0.1:9465")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Log JSON lines instead of human-readable ones.
    #[arg(long, env = "WORKER_LOG_JSON")]
    log_json: bool,
}

fn parse_labels(raw: &[String]) -> Result<Labels, String> {
    let mut labels = Labels::new();
    for l in raw.iter().filter(|l| !l.is_empty()) {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| format!("label {l:?} is not k=v"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    Ok(labels)
}

fn net_config(args: &Args) -> Result<Option<worker::net::NetConfig>, String> {
    let Some(bridge) = args.bridge.clone() else {
        return Ok(None);
    };
    let subnet: worker::net::Subnet = args
        .vm_subnet
        .parse()
        .map_err(|e| format!("--vm-subnet: {e}"))?;
    let upstream = match args.dns_upstream {
        Some(u) => u,
        None => resolv_conf_nameserver()
            .ok_or("--dns-upstream: not given and /etc/resolv.conf names no IPv4 nameserver")?,
    };
    let prefix_ok = !args.tap_prefix.is_empty()
        && args.tap_prefix.len() <= 8
        && args
            .tap_prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !prefix_ok || bridge.starts_with(&args.tap_prefix) {
        return Err(format!(
            "--tap-prefix: {:?} must be 1-8 of a-z, 0-9 and not begin the bridge's name {bridge:?}",
            args.tap_prefix
        ));
    }
    let mut net = worker::net::NetConfig::new(bridge, subnet, upstream);
    net.tap_prefix = args.tap_prefix.clone();
    net.table = args.nft_table.clone();
    if let Some(l) = args.dns_listen {
        net.dns_listen = l;
    }
    Ok(Some(net))
}

/// The first IPv4 `nameserver` of /etc/resolv.conf, port 53.
fn resolv_conf_nameserver() -> Option<std::net::SocketAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    conf.lines().find_map(|l| {
        let ip: std::net::Ipv4Addr = l.strip_prefix("nameserver")?.trim().parse().ok()?;
        Some(std::net::SocketAddr::from((ip, 53)))
    })
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let id: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() { "worker".into() } else { id }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    commands::telemetry::init(args.log_json);
    match real_main(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

// The "listening on" line on stdout is how tests and scripts learn the port.
#[allow(clippy::print_stdout)]
async fn real_main(args: Args) -> Result<(), String> {
    // A worker holds a pidfd or pipe per child and a socket per call: a
    // thousand VMs need more than the default soft limit.
    commands::daemon::raise_nofile_limit();
    let worker_id: WorkerId = args
        .worker_id
        .clone()
        .unwrap_or_else(default_worker_id)
        .parse()
        .map_err(|e| format!("--worker-id: {e}"))?;
    let mut config = worker::Config::new(worker_id, args.run_dir.clone(), args.ch_binary.clone());
    config.advertise = args.advertise.clone();
    config.store_root = args.store_root.clone();
    config.capacity = Resources {
        cpu: args.cpu.unwrap_or(config.capacity.cpu),
        memory_mb: args.memory_mb.unwrap_or(config.capacity.memory_mb),
    };
    config.labels = parse_labels(&args.labels).map_err(|e| format!("--label: {e}"))?;
    config.net = net_config(&args)?;
    config.files = worker::rundir::VmFileOptions {
        disk_mode: args.disk_mode,
        console_max_bytes: args.console_history_bytes,
        vm_owner: match &args.vm_user {
            Some(user) => Some(
                worker::vmm::user::VmOwner::lookup(user, args.vm_group.as_deref())
                    .map_err(|e| error_chain(&e))?,
            ),
            None => None,
        },
    };
    if args.vm_user.is_none() && rustix::process::geteuid().is_root() {
        tracing::warn!(
            "cloud-hypervisor will run as root: a guest that escapes into it owns the host; \
             give --vm-user an unprivileged account"
        );
    }
    config.stop_vms_on_exit = args.stop_vms_on_exit;
    config.socket_timeout = Duration::from_millis(args.socket_timeout_ms);
    config.shutdown_timeout = Duration::from_millis(args.shutdown_timeout_ms);
    config.api_timeout = Duration::from_millis(args.api_timeout_ms);
    config.closure_source = args.closure_source.clone();
    config.control_plane = args.control_plane.clone();
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_interval_ms);
    config.closure_public_key = args.cache_public_key.clone();
    config.auth = commands::auth::Authenticator::for_server(
        "the worker",
        "--token-file",
        args.token_file.as_deref(),
        args.insecure_no_auth,
        worker::server::ROLES,
    )
    .map_err(|e| error_chain(&e))?;
    if let Some(f) = &args.cluster_token_file {
        config.cluster_token = commands::auth::client_token(Some(f))
            .map(commands::auth::Secret::new)
            .map_err(|e| format!("--cluster-token-file: {}", error_chain(&e)))?;
    }

    let listener = commands::rpc::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    commands::auth::check_insecure_bind("the worker", addr, !config.auth.is_open(), "--token-file")
        .map_err(|e| error_chain(&e))?;
    let metrics_listener = match args.metrics_listen {
        Some(at) => Some(
            commands::metrics::bind(at)
                .await
                .map_err(|e| error_chain(&e))?,
        ),
        None => None,
    };
    // Signals are watched before the port is announced: a SIGTERM right
    // after "listening on" must stop us cleanly, not kill us.
    let shutdown = commands::daemon::shutdown_token();
    // Tests and scripts wait for this line to know the port.
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();

    worker::run_with_metrics(config, listener, metrics_listener, shutdown)
        .await
        .map_err(|e| e.message())
}
