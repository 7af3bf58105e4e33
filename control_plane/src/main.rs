//! `control_plane` binary: parses flags, sets up logging, binds the listener
//! and hands over to `control_plane::run` on a single-threaded LocalSet.

// Stdout carries the listening line that tests and scripts parse.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "control_plane",
    version,
    about = "Procurator control plane (Master RPC server)"
)]
struct Args {
    /// Address to serve the Master interface on.
    #[arg(
        long,
        env = "PCR_CONTROL_PLANE_LISTEN",
        default_value = "127.0.0.1:7000"
    )]
    listen: String,
    /// How long getAssignment waits for a change before answering "nothing new".
    #[arg(long, env = "PCR_LONG_POLL_TIMEOUT_MS", default_value_t = 25_000)]
    long_poll_timeout_ms: u64,
    /// A worker without a heartbeat for this long is unhealthy; its VMs move.
    #[arg(long, env = "PCR_HEARTBEAT_TIMEOUT_MS", default_value_t = 5_000)]
    heartbeat_timeout_ms: u64,
    /// After start, assignments are withheld this long so that workers can
    /// re-register and report their VMs (default: the heartbeat timeout).
    #[arg(long, env = "PCR_STARTUP_GRACE_MS")]
    startup_grace_ms: Option<u64>,
    /// Token file: one `<role>[:<worker-id>|<project>] <token>` per line
    /// (roles admin, ci, ci:<project> to publish for that project only,
    /// worker:<id>, reader). A worker token registers only its own id.
    /// Required unless --insecure-no-auth.
    #[arg(long, env = "PCR_CONTROL_PLANE_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Per-project quotas (vCPU, memory MiB, VM count): a TOML file (JSON if
    /// it ends in .json) with an optional `[default]` table for projects not
    /// listed and `[projects.<name>]` tables; without `[default]`, unlisted
    /// projects are refused. Re-read on SIGHUP. Without this option every
    /// project may publish, unlimited.
    #[arg(long, env = "PCR_QUOTAS")]
    quotas: Option<std::path::PathBuf>,
    /// Keep the generation history (with each generation's specs, author,
    /// message and CI job) and the event log in DIR/state.sqlite, so that
    /// `pcr history`, `pcr events` and each project's active generation
    /// survive a restart. Created when missing; a file that is not a
    /// control-plane state file is refused, never replaced. Without this
    /// option everything is in memory and forgotten at exit.
    #[arg(long, env = "PCR_CONTROL_PLANE_STATE_DIR", value_name = "DIR")]
    state_dir: Option<std::path::PathBuf>,
    /// Check no tokens: every caller is admin. For development only: only
    /// on a loopback address, and logged as a warning at startup.
    #[arg(long, env = "PCR_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
    /// A connection that has not logged in after this long is closed.
    #[arg(long, env = "PCR_LOGIN_DEADLINE_MS", default_value_t = 10_000)]
    login_deadline_ms: u64,
    /// Connections not logged in yet, held at once; a new one beyond this
    /// closes the oldest waiting one (never a logged-in worker's).
    #[arg(long, env = "PCR_MAX_WAITING_CONNECTIONS", default_value_t = commands::rpc::MAX_WAITING_FOR_LOGIN)]
    max_waiting_connections: usize,
    /// Serve Prometheus metrics (`GET /metrics`: generations, VMs by
    /// project and drift, placements, publish latency, workers by health,
    /// RPC calls and errors) on this address. Off unless given; given
    /// without a value it listens on loopback 127.0.0.1:9464. The endpoint
    /// needs no token, so only name a non-loopback address on purpose.
    #[arg(long, env = "PCR_CONTROL_PLANE_METRICS_LISTEN", num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Log JSON lines instead of human-readable ones.
    #[arg(long, env = "PCR_LOG_JSON")]
    log_json: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    commands::telemetry::init(args.log_json);
    // Every worker holds a connection open: thousands of workers need more
    // than the default soft limit.
    commands::daemon::raise_nofile_limit();
    let config = control_plane::Config {
        long_poll_timeout: Duration::from_millis(args.long_poll_timeout_ms),
        heartbeat_timeout: Duration::from_millis(args.heartbeat_timeout_ms),
        startup_grace: Duration::from_millis(
            args.startup_grace_ms.unwrap_or(args.heartbeat_timeout_ms),
        ),
        quota_file: args.quotas.clone(),
        state_dir: args.state_dir.clone(),
    };
    if let Err(e) = control_plane::load_quotas(&config) {
        eprintln!("error: {}", commands::report::error_chain(&e));
        return std::process::ExitCode::FAILURE;
    }
    // A state file that cannot be read stops the start here, before the
    // port is taken, with the file named; it is never replaced.
    if let Err(e) = control_plane::open_store(&config).and_then(|s| s.map(|s| s.load()).transpose())
    {
        eprintln!("error: {}", commands::report::error_chain(&e));
        return std::process::ExitCode::FAILURE;
    }
    let limits = commands::rpc::ConnLimits {
        login_deadline: Duration::from_millis(args.login_deadline_ms),
        max_waiting: args.max_waiting_connections,
        ..commands::rpc::ConnLimits::default()
    };
    let auth = match commands::auth::Authenticator::for_server(
        "the control plane",
        "--token-file",
        args.token_file.as_deref(),
        args.insecure_no_auth,
        control_plane::ROLES,
    ) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {}", commands::report::error_chain(&e));
            return std::process::ExitCode::FAILURE;
        }
    };
    commands::rpc::block_on_local(async move {
        let listener = match commands::rpc::bind(&args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", args.listen);
                return std::process::ExitCode::FAILURE;
            }
        };
        if let Ok(bound) = listener.local_addr()
            && let Err(e) = commands::auth::check_insecure_bind(
                "the control plane",
                bound,
                !auth.is_open(),
                "--token-file",
            )
        {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or(args.listen.clone());
        let metrics_listener = match args.metrics_listen {
            None => None,
            Some(at) => match commands::metrics::bind(at).await {
                Ok(l) => {
                    tracing::info!(addr = %at, "metrics listening");
                    Some(l)
                }
                Err(e) => {
                    eprintln!("error: {}", commands::report::error_chain(&e));
                    return std::process::ExitCode::FAILURE;
                }
            },
        };
        // Signals are watched before the port is announced: a SIGTERM right
        // after "listening on" must stop us cleanly, not kill us.
        let shutdown = commands::daemon::shutdown_token();
        // Tests and scripts parse this line to learn the port.
        println!("listening on {addr}");
        tracing::info!(%addr, "control plane listening");
        control_plane::run_with_metrics(config, auth, limits, listener, metrics_listener, shutdown)
            .await;
        std::process::ExitCode::SUCCESS
    })
}
