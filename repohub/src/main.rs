//! The `repohub` binary: flags and environment to a `Config`, then `run`;
//! or `repohub admin …` for account administration on the host.
#![allow(clippy::print_stdout)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "repohub",
    version,
    about = "Procurator's web UI and git host",
    long_about = "Procurator's web UI and git host. Signup is closed by default: create the \
first account with `repohub admin create-user NAME --admin` (password on stdin), \
or open signup with --open-signup."
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on.
    #[arg(long, env = "REPOHUB_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Directory for the SQLite database, bare repositories and the push spool.
    #[arg(
        long,
        env = "REPOHUB_DATA_DIR",
        default_value = "./repohub-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Let anyone create an account at /signup (closed by default).
    #[arg(long, env = "REPOHUB_OPEN_SIGNUP")]
    open_signup: bool,
    /// Accounts made through open signup may create projects (by default
    /// only admins and accounts an admin allowed may).
    #[arg(long, env = "REPOHUB_SIGNUP_MAY_CREATE_PROJECTS")]
    signup_may_create_projects: bool,
    /// The account of this name is an admin (made so at startup; signup can
    /// never take the name: create it with `repohub admin create-user`).
    #[arg(long, env = "REPOHUB_ADMIN")]
    admin: Option<String>,
    /// The largest pack a push may send, in bytes (git's
    /// receive.maxInputSize on every repository; the request body is
    /// refused with 413 a little above it).
    #[arg(long, env = "REPOHUB_MAX_PUSH_BYTES", default_value_t = 512 * 1024 * 1024)]
    max_push_bytes: u64,
    /// ci_service base URL.
    #[arg(long, env = "REPOHUB_CI_URL")]
    ci_url: Option<String>,
    /// File holding the bearer secret for ci_service's push hook.
    #[arg(long, env = "REPOHUB_CI_SECRET_FILE")]
    ci_secret_file: Option<PathBuf>,
    /// File holding a token of ci_service's --api-token-file, sent when
    /// the CI panels read jobs and logs (needed when ci_service has an API
    /// token file). A `reader` token only reads; an `admin` token also lets
    /// project members cancel and re-run their jobs from the job page.
    #[arg(
        long,
        visible_alias = "ci-api-token-file",
        env = "REPOHUB_CI_TOKEN_FILE"
    )]
    ci_token_file: Option<PathBuf>,
    /// The binary cache's public URL (http://host:port): job pages link
    /// each built derivation's build log there (`/log/<drv>`, which the
    /// cache serves to anyone). Without it the derivations are listed
    /// without links.
    #[arg(long, env = "REPOHUB_CACHE_URL")]
    cache_url: Option<String>,
    /// Control plane address (Cap'n Proto Master), host:port.
    #[arg(long, env = "REPOHUB_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// File holding the token for the control plane's login (a `reader`
    /// token; needed when the control plane has a token file).
    #[arg(long, env = "REPOHUB_CONTROL_PLANE_TOKEN_FILE")]
    control_plane_token_file: Option<PathBuf>,
    /// File holding the token for the VM pages' spec and serial console,
    /// which reach the VM's worker through the control plane (`getWorker`
    /// needs an `admin` token). Default: the --control-plane-token-file
    /// token; with a `reader` token there, the VM pages say the console is
    /// refused and show the rest.
    #[arg(long, env = "REPOHUB_CONTROL_PLANE_CONSOLE_TOKEN_FILE")]
    control_plane_console_token_file: Option<PathBuf>,
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

#[derive(Subcommand, Debug)]
enum Command {
    /// Account administration, straight on the database in --data-dir.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Creates an account. The password is read from --password-file, or
    /// else from stdin (its first line); never from the command line.
    CreateUser {
        /// The account's name (letters, digits, '.', '_', '-').
        name: String,
        /// Make the account an admin (sees and manages every project).
        #[arg(long)]
        admin: bool,
        /// Allow the account to create projects.
        #[arg(long)]
        may_create_projects: bool,
        /// File whose first line is the password.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Grants or revokes an existing account's rights.
    SetRights {
        /// The account's name.
        name: String,
        /// Make the account an admin (true) or not (false).
        #[arg(long)]
        admin: Option<bool>,
        /// Allow the account to create projects (true) or not (false).
        #[arg(long)]
        may_create_projects: Option<bool>,
    },
}

/// Runs `repohub admin …`; the exit code says how it went.
fn admin(
    data_dir: &std::path::Path,
    kdf_memory_kib: u32,
    cmd: AdminCommand,
) -> std::process::ExitCode {
    use repohub::admin;
    let result = admin::open_db(data_dir).and_then(|db| match cmd {
        AdminCommand::CreateUser {
            name,
            admin: is_admin,
            may_create_projects,
            password_file,
        } => {
            let text = match &password_file {
                Some(p) => std::fs::read_to_string(p),
                None => {
                    let mut s = String::new();
                    std::io::stdin()
                        .take(64 * 1024)
                        .read_to_string(&mut s)
                        .map(|_| s)
                }
            };
            let text = text.map_err(|e| {
                admin::AdminError::Password(
                    password_file.clone().unwrap_or_else(|| "stdin".into()),
                    e,
                )
            })?;
            let kdf = repohub::auth::KdfParams {
                memory_kib: kdf_memory_kib,
                ..Default::default()
            };
            let rights = admin::Rights {
                admin: is_admin,
                may_create_projects,
            };
            let u = admin::create_user(&db, &kdf, &name, admin::password_from(&text), rights)?;
            Ok(format!(
                "created user {}{}{}",
                u.name,
                if u.admin { " (admin)" } else { "" },
                if u.may_create_projects {
                    " (may create projects)"
                } else {
                    ""
                }
            ))
        }
        AdminCommand::SetRights {
            name,
            admin: is_admin,
            may_create_projects,
        } => {
            admin::set_rights(&db, &name, is_admin, may_create_projects)?;
            Ok(format!("updated user {name}"))
        }
    });
    match result {
        Ok(msg) => {
            let _ = writeln!(std::io::stdout(), "{msg}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("repohub admin: {}", commands::report::error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    commands::telemetry::init(args.log_json);
    if let Some(Command::Admin(cmd)) = args.command {
        return admin(&args.data_dir, args.kdf_memory_kib, cmd);
    }
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
    // The links go into pages as they are: only a web address may.
    if let Some(u) = args.cache_url.as_deref().filter(|u| {
        !(u.starts_with("http://") || u.starts_with("https://")) || u.parse::<http::Uri>().is_err()
    }) {
        eprintln!("repohub: --cache-url: {u:?} is not an http:// or https:// URL");
        return std::process::ExitCode::from(2);
    }
    config.cache_url = args.cache_url;
    config.control_plane = args.control_plane;
    if let Some(p) = &args.ci_token_file {
        match commands::auth::read_secret_file(p) {
            Ok(t) => config.ci_token = commands::auth::Secret::new(t),
            Err(e) => {
                let e = commands::report::error_chain(&e);
                eprintln!("repohub: --ci-token-file: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
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
    if let Some(p) = &args.control_plane_console_token_file {
        match commands::auth::client_token(Some(p)) {
            Ok(t) => config.control_plane_console_token = commands::auth::Secret::new(t),
            Err(e) => {
                let e = commands::report::error_chain(&e);
                eprintln!("repohub: --control-plane-console-token-file: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    config.kdf.memory_kib = args.kdf_memory_kib;
    config.backoff.initial = Duration::from_millis(args.retry_initial_ms);
    config.secure_cookies = args.secure_cookies;
    config.open_signup = args.open_signup;
    config.signup_may_create_projects = args.signup_may_create_projects;
    config.admin = args.admin;
    config.limits.receive.max_pack_bytes = args.max_push_bytes;
    // The request body carries the pack plus the ref commands.
    config.limits.max_push_body = args.max_push_bytes.saturating_add(1024 * 1024);

    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("repohub: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::from(2);
        }
    };
    // Signals are watched before the port is announced: a SIGTERM right
    // after "listening on" must stop us cleanly, not kill us.
    let shutdown = commands::daemon::shutdown_token();
    // Parsed by tests and scripts that start us on port 0, as the other
    // services print it.
    if let Ok(addr) = listener.local_addr() {
        println!("listening on {addr}");
        let _ = std::io::stdout().flush();
    }
    match repohub::run(config, listener, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("repohub: {}", commands::report::error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
