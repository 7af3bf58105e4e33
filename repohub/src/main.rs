//! The `repohub` binary: flags and environment to a `Config`, then `run`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "repohub", about = "Procurator's web UI and git host")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "REPOHUB_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Directory for the SQLite database, bare repositories and the push spool.
    #[arg(long, env = "REPOHUB_DATA_DIR", default_value = "./repohub-data")]
    data_dir: PathBuf,
    /// ci_service base URL.
    #[arg(long, env = "REPOHUB_CI_URL")]
    ci_url: Option<String>,
    /// File holding the bearer secret for ci_service's push hook.
    #[arg(long, env = "REPOHUB_CI_SECRET_FILE")]
    ci_secret_file: Option<PathBuf>,
    /// Control plane address (Cap'n Proto Master), host:port.
    #[arg(long, env = "REPOHUB_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// File holding the token for the control plane's login (a `reader`
    /// token; needed when the control plane has a token file).
    #[arg(long, env = "REPOHUB_CONTROL_PLANE_TOKEN_FILE")]
    control_plane_token_file: Option<PathBuf>,
    /// Argon2id memory cost in KiB (default 19456, OWASP's minimum; lower only for tests).
    #[arg(long, env = "REPOHUB_KDF_MEMORY_KIB", default_value_t = 19 * 1024)]
    kdf_memory_kib: u32,
    /// First retry delay for ci_service notifications, in milliseconds (doubles up to 60 s).
    #[arg(long, env = "REPOHUB_RETRY_INITIAL_MS", default_value_t = 1000)]
    retry_initial_ms: u64,
    /// Mark cookies Secure (when served behind HTTPS).
    #[arg(long, env = "REPOHUB_SECURE_COOKIES")]
    secure_cookies: bool,
    /// Log as JSON lines.
    #[arg(long, env = "REPOHUB_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    commands::telemetry::init(args.log_json);
    let secret = match &args.ci_secret_file {
        None => None,
        Some(p) => match commands::auth::read_secret_file(p) {
            Ok(s) => Some(s),
            Err(e) => {
                let e = commands::report::error_chain(&e);
                eprintln!("repohub: --ci-secret-file: {e}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    let mut config = repohub::Config::new(args.data_dir);
    config.ci_url = args.ci_url;
    config.ci_secret = secret;
    config.control_plane = args.control_plane;
    if let Some(p) = &args.control_plane_token_file {
        match commands::auth::client_token(Some(p)) {
            Ok(t) => config.control_plane_token = commands::auth::Secret::new(t),
            Err(e) => {
                let e = commands::report::error_chain(&e);
                eprintln!("repohub: --control-plane-token-file: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    config.kdf.memory_kib = args.kdf_memory_kib;
    config.backoff.initial = Duration::from_millis(args.retry_initial_ms);
    config.secure_cookies = args.secure_cookies;

    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("repohub: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::from(2);
        }
    };
    match repohub::run(config, listener, commands::daemon::shutdown_token()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("repohub: {}", commands::report::error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
