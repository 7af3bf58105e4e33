//! ci_service binary: the CI server (default), plus `install-hook` (writes
//! a bare repository's post-receive hook) and `notify` (what the hook runs).

// Stdout is part of the interface: the listening line and install-hook's answer.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ci_service",
    version,
    about = "Procurator CI: push -> nix build -> cache -> publish",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "CI_LISTEN", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// Where the job database, logs, mirrors and work dirs live.
    #[arg(long, env = "CI_DATA_DIR", default_value = ".state/ci")]
    data_dir: PathBuf,
    /// Binary cache base URL (closures are copied there, zstd).
    #[arg(long, env = "CI_CACHE")]
    cache: Option<String>,
    /// File holding the cache's upload token.
    #[arg(long, env = "CI_CACHE_TOKEN_FILE")]
    cache_token_file: Option<PathBuf>,
    /// The cache's upload token itself (environment only, never a flag:
    /// command lines are visible to every user).
    #[arg(
        long = "cache-token-from-env-only",
        env = "CI_CACHE_TOKEN",
        hide = true,
        hide_env_values = true
    )]
    cache_token: Option<String>,
    /// Control plane Cap'n Proto address (host:port).
    #[arg(long, env = "CI_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// File holding the `ci` token for the control plane's login (needed
    /// when the control plane has a token file).
    #[arg(long, env = "CI_CONTROL_PLANE_TOKEN_FILE")]
    control_plane_token_file: Option<PathBuf>,
    /// NIX_CONF_DIR for nix calls (hermetic runs); default: nix's own.
    #[arg(long, env = "CI_NIX_CONF_DIR")]
    nix_conf_dir: Option<PathBuf>,
    /// File holding the shared secret push hooks must present. Required
    /// unless --insecure-no-auth.
    #[arg(long, env = "CI_HOOK_SECRET_FILE")]
    hook_secret_file: Option<PathBuf>,
    /// Take push notifications without a hook secret: anyone who can reach
    /// the port can start builds. For development only: only on a loopback
    /// address, and logged as a warning at startup.
    #[arg(long, env = "CI_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
    /// Without --projects: every repository deploys the project `default`,
    /// and only pushes to this ref publish (others are built, not deployed).
    #[arg(long, env = "CI_DEPLOY_REF", default_value = "refs/heads/main")]
    deploy_ref: String,
    /// Deploy rights for bare repositories (TOML): `[[deploy]]` tables with
    /// `repo` (as the push hook names it), `project` and `ref`. Only a listed
    /// repository, on its ref, publishes for its project; the file wins over
    /// what a push event (repohub) claims for a repository it lists; an
    /// unlisted repository deploys only when repohub names it its project's
    /// deploy repository. Without this file every repository deploys
    /// `default` on --deploy-ref (single-project setup).
    #[arg(long, env = "CI_PROJECTS")]
    projects: Option<PathBuf>,
    /// Token file (`reader <token>` / `admin <token>` lines, the control
    /// plane's format) for reading jobs, logs, specs and generations
    /// (`Authorization: Bearer <token>`). Without it the read API is open
    /// and ci_service only listens on loopback.
    #[arg(long, env = "CI_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Unprivileged user that evaluates and builds pushed flakes (nix then
    /// talks to the nix daemon). Needs ci_service to run as root (or with
    /// CAP_SETUID/CAP_SETGID). Without it nix runs as ci_service's user,
    /// with restricted evaluation, the build sandbox and a scrubbed
    /// environment as the only boundary.
    #[arg(long, env = "CI_EVAL_USER")]
    eval_user: Option<String>,
    /// The nix daemon the evaluation user's nix talks to: `daemon` (the
    /// system's socket) or `unix:///path/to/socket`.
    #[arg(long, env = "CI_EVAL_NIX_REMOTE", default_value = "daemon")]
    eval_nix_remote: String,
    /// Evaluate pushed flakes without the bubblewrap jail (for hosts
    /// without bubblewrap or namespaces). The jail is what keeps a fetcher
    /// pointed at a host path (`builtins.getFlake "git+file:///…?rev=…"`)
    /// from reading another repository on this host.
    #[arg(long, env = "CI_NO_EVAL_JAIL")]
    no_eval_jail: bool,
    /// A job's log holds at most this many bytes (then one "log truncated"
    /// line); a build printing more is stopped by nix.
    #[arg(long, env = "CI_MAX_JOB_LOG_BYTES", default_value_t = ci_service::DEFAULT_MAX_JOB_LOG_BYTES)]
    max_job_log_bytes: u64,
    /// A pushed commit's tree may hold at most this many bytes when
    /// written out (a blob counts each time the tree names it).
    #[arg(long, env = "CI_MAX_CHECKOUT_BYTES", default_value_t = repo_outils::git::TreeLimits::default().max_bytes)]
    max_checkout_bytes: u64,
    /// A pushed commit's tree may hold at most this many entries.
    #[arg(long, env = "CI_MAX_CHECKOUT_ENTRIES", default_value_t = repo_outils::git::TreeLimits::default().max_entries)]
    max_checkout_entries: u64,
    /// How many times a step is tried again after a transient failure
    /// inside a job (the cache unreachable, restarting or answering 5xx);
    /// build and evaluation failures are never retried. 0: no retries.
    #[arg(long, env = "CI_RETRIES", default_value_t = ci_service::runner::RetryPolicy::default().retries)]
    retries: u32,
    /// The wait before the first retry, in ms; it doubles each time (at
    /// most 30 s).
    #[arg(long, env = "CI_RETRY_BACKOFF_MS", default_value_t = ci_service::runner::RetryPolicy::default().backoff.as_millis() as u64)]
    retry_backoff_ms: u64,
    /// Finished jobs and their logs are deleted this many days after they
    /// ended (checked at start and hourly); generations are kept.
    #[arg(long, env = "CI_JOB_RETENTION_DAYS", default_value_t = ci_service::DEFAULT_JOB_RETENTION_DAYS, value_parser = clap::value_parser!(u64).range(1..=36_500))]
    job_retention_days: u64,
    /// Log JSON lines instead of human-readable ones.
    #[arg(long, env = "CI_LOG_JSON")]
    log_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Install the post-receive hook into a bare repository.
    InstallHook {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long, default_value = "http://127.0.0.1:7100")]
        url: String,
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Post pushed refs (`old new ref` lines on stdin) to ci_service.
    Notify {
        #[arg(long, default_value = "http://127.0.0.1:7100")]
        url: String,
        #[arg(long)]
        repo: String,
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
}

/// A secret file's content, or the message to print.
fn read_secret(path: &Path) -> Result<String, String> {
    commands::auth::read_secret_file(path).map_err(|e| commands::report::error_chain(&e))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::InstallHook {
            repo,
            url,
            secret_file,
        }) => {
            let bin = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("ci_service"));
            match ci_service::hook::install_hook(&repo, &url, secret_file.as_deref(), &bin) {
                Ok(p) => {
                    println!("installed {}", p.display());
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}", commands::report::error_chain(&e));
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Some(Command::Notify {
            url,
            repo,
            secret_file,
        }) => {
            // Never fail the push: a bad secret file is a warning too.
            let secret = secret_file
                .as_ref()
                .and_then(|f| read_secret(f).map_err(|e| eprintln!("warning: {e}")).ok());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(ci_service::hook::notify(
                &url,
                &repo,
                secret.as_deref(),
                std::io::stdin().lock(),
            ));
            std::process::ExitCode::SUCCESS
        }
        None => serve(cli.serve),
    }
}

fn serve(a: ServeArgs) -> std::process::ExitCode {
    commands::telemetry::init(a.log_json);
    let token = match (&a.cache_token_file, a.cache_token) {
        (Some(f), _) => match read_secret(f) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
        (None, t) => t,
    };
    let hook_secret = match (a.hook_secret_file.as_deref(), a.insecure_no_auth) {
        (Some(f), false) => match read_secret(f) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
        (None, true) => None,
        (Some(_), true) => {
            eprintln!("error: --hook-secret-file and --insecure-no-auth exclude each other");
            return std::process::ExitCode::FAILURE;
        }
        (None, false) => {
            eprintln!(
                "error: ci_service needs --hook-secret-file: without it anyone who can reach it \
                 could start builds; pass --hook-secret-file, or --insecure-no-auth for \
                 development on a loopback address"
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    let control_plane_token = match a.control_plane_token_file.as_deref() {
        None => commands::auth::Secret::default(),
        Some(f) => match commands::auth::client_token(Some(f)) {
            Ok(t) => commands::auth::Secret::new(t),
            Err(e) => {
                let e = commands::report::error_chain(&e);
                eprintln!("error: --control-plane-token-file: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    if let Err(e) = commands::auth::check_insecure_bind(
        "ci_service's push hook",
        a.listen,
        hook_secret.is_some(),
        "--hook-secret-file",
    ) {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    // The read API is open without a token file, on loopback only.
    let api_auth = match a
        .api_token_file
        .as_deref()
        .map_or(Ok(commands::auth::Authenticator::Open), |p| {
            commands::auth::Authenticator::load(p, ci_service::api::API_ROLES)
        }) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {}", commands::report::error_chain(&e));
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Err(e) = commands::auth::check_bind(
        "ci_service's read API",
        a.listen,
        !api_auth.is_open(),
        "--api-token-file",
    ) {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let deploy = match &a.projects {
        None => ci_service::deploy::DeployRights::single_project(a.deploy_ref.clone()),
        Some(p) => match ci_service::deploy::DeployRights::load(p, &a.deploy_ref) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {}", commands::report::error_chain(&e));
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    let config = ci_service::Config {
        data_dir: a.data_dir,
        cache_url: a.cache,
        cache_token: token,
        control_plane: a.control_plane,
        control_plane_token,
        nix_conf_dir: a.nix_conf_dir,
        hook_secret,
        deploy,
        api_auth,
        eval_user: a.eval_user,
        eval_nix_remote: a.eval_nix_remote,
        eval_jail: !a.no_eval_jail,
        max_job_log_bytes: a.max_job_log_bytes,
        tree_limits: repo_outils::git::TreeLimits {
            max_bytes: a.max_checkout_bytes,
            max_entries: a.max_checkout_entries,
            ..repo_outils::git::TreeLimits::default()
        },
        retry: ci_service::runner::RetryPolicy {
            retries: a.retries,
            backoff: std::time::Duration::from_millis(a.retry_backoff_ms),
        },
        job_retention: std::time::Duration::from_secs(a.job_retention_days * 86_400),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(a.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", a.listen);
                return std::process::ExitCode::FAILURE;
            }
        };
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        // Signals are watched before the port is announced: a SIGTERM right
        // after "listening on" must stop us cleanly, not kill us.
        let shutdown = commands::daemon::shutdown_token();
        println!("listening on {addr}");
        match ci_service::run(config, listener, shutdown).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", commands::report::error_chain(&e));
                std::process::ExitCode::FAILURE
            }
        }
    })
}
