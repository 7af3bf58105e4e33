//! `cache` binary: serve the binary cache, generate keys, and maintain the
//! data dir (verify, gc, du, pins, ls, info).

// Stdout is this CLI's output: the listening line and the maintenance reports.
#![allow(clippy::print_stdout)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use cache::signing::SecretKey;
use cache::store::Store;
use cache::{Config, nar::EntryKind};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cache",
    version,
    about = "Procurator's Nix binary cache server"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "CACHE_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct DataDir {
    /// Directory holding the index, NARs and narinfos.
    #[arg(long, env = "CACHE_DATA_DIR")]
    data_dir: PathBuf,
    /// The Nix store directory of the cached paths.
    #[arg(long, env = "CACHE_STORE_DIR", default_value = "/nix/store")]
    store_dir: String,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    dir: DataDir,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CACHE_LISTEN", default_value = "127.0.0.1:5000")]
    listen: String,
    /// Secret key file (Nix format) used to sign narinfos.
    #[arg(long, env = "CACHE_KEY_FILE")]
    key_file: PathBuf,
    /// File holding the upload tokens (HTTP basic auth passwords), one a
    /// line: `<token>` uploads for every project, `<project> <token>` for
    /// one project (its uploads are recorded as that project's and it may
    /// only touch its own pins). Without it uploads are refused.
    #[arg(long, env = "CACHE_UPLOAD_TOKEN_FILE")]
    upload_token_file: Option<PathBuf>,
    /// Largest accepted NAR upload in bytes.
    #[arg(long, env = "CACHE_MAX_UPLOAD_BYTES", default_value_t = cache::DEFAULT_MAX_UPLOAD_BYTES)]
    max_upload_bytes: u64,
    /// Priority announced in nix-cache-info.
    #[arg(long, env = "CACHE_PRIORITY", default_value_t = 40)]
    priority: u32,
    /// Also write the bound port to this file.
    #[arg(long, env = "CACHE_PORT_FILE")]
    port_file: Option<PathBuf>,
    /// Collect garbage this often while serving (as `cache gc --yes` would,
    /// with --gc-grace and --keep-generations): e.g. 1h, 6h, 1d. 0 (the
    /// default) never collects: deleting is left to an explicit choice,
    /// since a cache whose paths nobody pins would lose them all.
    #[arg(long, env = "CACHE_GC_INTERVAL", default_value = "0", value_parser = parse_duration)]
    gc_interval: Duration,
    /// Scheduled gc keeps paths uploaded within this period, pinned or not.
    #[arg(long, env = "CACHE_GC_GRACE", default_value = "24h", value_parser = parse_duration)]
    gc_grace: Duration,
    #[command(flatten)]
    retention: Retention,
    /// A control plane (host:port) that scheduled gc asks which generations
    /// workers still run: their pins are kept however old (a paused
    /// rollout's old replicas). When it cannot be asked, that round drops
    /// no generation pin. Unset: only the newest --keep-generations count.
    #[arg(long, env = "CACHE_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// The token (a reader's is enough) for --control-plane.
    #[arg(
        long,
        env = "CACHE_CONTROL_PLANE_TOKEN_FILE",
        requires = "control_plane"
    )]
    control_plane_token_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct Retention {
    /// Generation pins kept per project: of the pins named
    /// `<project>/generation-<N>` (and the older unprefixed
    /// `generation-<N>`), gc drops all but the N highest of each project;
    /// other pins are always kept. 0 keeps every generation pin.
    #[arg(long, env = "CACHE_KEEP_GENERATIONS", default_value_t = cache::store::DEFAULT_KEEP_GENERATIONS)]
    keep_generations: usize,
}

impl Retention {
    fn keep(&self) -> Option<usize> {
        (self.keep_generations > 0).then_some(self.keep_generations)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the cache over HTTP.
    Serve(ServeArgs),
    /// Generate a signing key pair: DIR/secret-key and DIR/public-key; prints the public key.
    Keygen {
        /// Key name, e.g. cache.example.org-1.
        name: String,
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
    /// Re-hash every stored path (FileHash/FileSize and, decompressed, NarHash/NarSize) and check narinfos.
    Verify {
        #[command(flatten)]
        dir: DataDir,
        /// Secret key file, to check signatures too.
        #[arg(long, env = "CACHE_KEY_FILE")]
        key_file: Option<PathBuf>,
        /// Move bad paths (and paths referencing them) to quarantine/ and drop them from the index.
        #[arg(long)]
        quarantine: bool,
    },
    /// Drop generation pins past --keep-generations, then delete paths
    /// outside the closures of pins and of recent uploads, and build logs
    /// of derivations no kept path came from (dry run unless --yes).
    Gc {
        #[command(flatten)]
        dir: DataDir,
        /// Keep paths uploaded within this period: e.g. 30s, 15m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        grace: Duration,
        #[command(flatten)]
        retention: Retention,
        /// Actually delete.
        #[arg(long)]
        yes: bool,
    },
    /// Pin store paths (and their closures) under NAME, replacing what NAME pinned before.
    Pin {
        #[command(flatten)]
        dir: DataDir,
        name: String,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Remove pin NAME.
    Unpin {
        #[command(flatten)]
        dir: DataDir,
        name: String,
    },
    /// Show NAR bytes per project and per pin (closure, and what only that
    /// pin holds), and what no pin holds.
    Du {
        #[command(flatten)]
        dir: DataDir,
    },
    /// List pins.
    Pins {
        #[command(flatten)]
        dir: DataDir,
    },
    /// List the files of a stored path.
    Ls {
        #[command(flatten)]
        dir: DataDir,
        path: String,
    },
    /// Show a stored path's narinfo, upload time and pins.
    Info {
        #[command(flatten)]
        dir: DataDir,
        path: String,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| Duration::from_secs(n * mult))
        .map_err(|_| format!("bad duration {s:?}"))
}

/// Opens an existing cache for maintenance; a mistyped --data-dir must not
/// silently create (and "verify" or "gc") an empty cache.
fn open(dir: &DataDir, key: Option<SecretKey>) -> Result<Store, Box<dyn std::error::Error>> {
    if !dir.data_dir.join("index.sqlite").exists() {
        return Err(format!(
            "no cache in {} (index.sqlite missing)",
            dir.data_dir.display()
        )
        .into());
    }
    Ok(Store::open(&dir.data_dir, &dir.store_dir, key)?)
}

/// What a subcommand returns: its exit code, or the error `main` prints.
type Outcome = Result<ExitCode, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    commands::telemetry::init(cli.log_json);
    let outcome = match cli.cmd {
        Cmd::Serve(args) => serve(args),
        Cmd::Keygen { name, out_dir } => keygen(&name, &out_dir),
        Cmd::Verify {
            dir,
            key_file,
            quarantine,
        } => verify(&dir, key_file.as_deref(), quarantine),
        Cmd::Gc {
            dir,
            grace,
            retention,
            yes,
        } => gc(&dir, grace, retention.keep(), yes),
        Cmd::Du { dir } => du(&dir),
        Cmd::Pin { dir, name, paths } => pin(&dir, &name, &paths),
        Cmd::Unpin { dir, name } => unpin(&dir, &name),
        Cmd::Pins { dir } => pins(&dir),
        Cmd::Ls { dir, path } => ls(&dir, &path),
        Cmd::Info { dir, path } => info(&dir, &path),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("error: {}", commands::report::error_chain(e.as_ref()));
        ExitCode::from(2)
    })
}

fn serve(args: ServeArgs) -> Outcome {
    let mut config = Config::new(&args.dir.data_dir, args.key_file);
    config.store_dir = args.dir.store_dir;
    config.max_upload_bytes = args.max_upload_bytes;
    config.priority = args.priority;
    config.gc_interval = (!args.gc_interval.is_zero()).then_some(args.gc_interval);
    config.gc_policy = cache::store::GcPolicy {
        grace: args.gc_grace,
        keep_generations: args.retention.keep(),
    };
    if let Some(f) = &args.upload_token_file {
        config.upload_tokens = cache::UploadTokens::load(f)?;
    }
    if let Some(addr) = &args.control_plane {
        let token = commands::auth::client_token(args.control_plane_token_file.as_deref())?;
        config.live_generations_from = Some(cache::LiveSource {
            control_plane: addr.clone(),
            token: commands::auth::Secret::new(token),
        });
    }
    // Open the store (and clean up interrupted uploads) before announcing
    // the address, so "listening" means ready.
    let secured = !config.upload_tokens.is_empty();
    let prepared = cache::server::prepare(config)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen).await?;
        let addr = listener.local_addr()?;
        // Without a token nobody can upload: such a cache is for one
        // host's development, so keep it on loopback.
        commands::auth::check_bind("the cache", addr, secured, "--upload-token-file")?;
        if let Some(p) = &args.port_file {
            std::fs::write(p, format!("{}\n", addr.port()))?;
        }
        // Signals are watched before the port is announced: a SIGTERM right
        // after "listening on" must stop us cleanly, not kill us.
        let shutdown = commands::daemon::shutdown_token();
        // Parsed by tests and scripts that start us on port 0.
        println!("listening on {addr}");
        std::io::stdout().flush()?;
        cache::server::serve(prepared, listener, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn keygen(name: &str, out_dir: &Path) -> Outcome {
    let sk = SecretKey::generate(name)?;
    std::fs::create_dir_all(out_dir)?;
    write_private(&out_dir.join("secret-key"), &sk.to_nix_string())?;
    std::fs::write(out_dir.join("public-key"), sk.public().to_nix_string())?;
    println!("{}", sk.public().to_nix_string());
    Ok(ExitCode::SUCCESS)
}

fn verify(dir: &DataDir, key_file: Option<&Path>, quarantine: bool) -> Outcome {
    let key = key_file.map(SecretKey::load).transpose()?;
    let store = open(dir, key)?;
    let r = store.verify(quarantine)?;
    for p in &r.problems {
        println!("BAD {}: {}", p.subject, p.what);
    }
    for q in &r.quarantined {
        println!("quarantined {q}");
    }
    println!(
        "checked {} paths: {} problems, {} orphan NAR files (gc removes them)",
        r.checked,
        r.problems.len(),
        r.orphan_nars
    );
    Ok(if r.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn gc(dir: &DataDir, grace: Duration, keep_generations: Option<usize>, yes: bool) -> Outcome {
    let store = open(dir, None)?;
    let policy = cache::store::GcPolicy {
        grace,
        keep_generations,
    };
    let r = store.gc(&policy, yes)?;
    let verb = if yes { "deleted" } else { "would delete" };
    for p in &r.unpinned {
        println!("{} {p}", if yes { "unpinned" } else { "would unpin" });
    }
    for l in &r.logs {
        println!("{verb} log/{l}");
    }
    for p in &r.deleted {
        println!("{verb} {}/{p}", dir.store_dir);
    }
    for n in &r.nar_files {
        println!("{verb} nar/{n}");
    }
    for n in &r.orphan_narinfos {
        println!("{verb} unindexed {n}");
    }
    println!(
        "{} roots, {} paths kept, {} paths and {} NAR files ({} bytes) {verb}{}",
        r.roots,
        r.kept,
        r.deleted.len(),
        r.nar_files.len(),
        r.freed_bytes,
        if yes {
            ""
        } else {
            " (dry run; --yes to delete)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn du(dir: &DataDir) -> Outcome {
    let r = open(dir, None)?.du()?;
    let project = |p: &Option<String>| p.clone().unwrap_or_else(|| "-".to_owned());
    println!("{:<24} {:>8} {:>14}", "PROJECT", "PATHS", "BYTES");
    for (p, paths, bytes) in &r.projects {
        println!("{:<24} {paths:>8} {bytes:>14}", project(p));
    }
    println!();
    println!(
        "{:<24} {:<32} {:>8} {:>14} {:>14}",
        "PROJECT", "PIN", "PATHS", "BYTES", "UNIQUE_BYTES"
    );
    for u in &r.pins {
        println!(
            "{:<24} {:<32} {:>8} {:>14} {:>14}",
            project(&u.project),
            u.name,
            u.paths,
            u.bytes,
            u.unique_bytes
        );
    }
    println!();
    println!(
        "total {} bytes; {} bytes in no pin (kept only within the gc grace period)",
        r.total_bytes, r.unpinned_bytes
    );
    Ok(ExitCode::SUCCESS)
}

fn pin(dir: &DataDir, name: &str, paths: &[String]) -> Outcome {
    open(dir, None)?.set_pin(name, paths, None)?;
    println!("pinned {} paths as {name}", paths.len());
    Ok(ExitCode::SUCCESS)
}

fn unpin(dir: &DataDir, name: &str) -> Outcome {
    if open(dir, None)?.delete_pin(name, None)? {
        println!("unpinned {name}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("no pin named {name}");
        Ok(ExitCode::from(1))
    }
}

fn pins(dir: &DataDir) -> Outcome {
    for (name, path) in open(dir, None)?.pins()? {
        println!("{name}\t{path}");
    }
    Ok(ExitCode::SUCCESS)
}

fn ls(dir: &DataDir, path: &str) -> Outcome {
    for e in open(dir, None)?.ls(path)? {
        let p = if e.path.is_empty() {
            ".".to_owned()
        } else {
            e.path
        };
        match e.kind {
            EntryKind::Directory => println!("dr-xr-xr-x {:>12} {p}", 0),
            EntryKind::Regular { executable, size } => {
                let mode = if executable {
                    "-r-xr-xr-x"
                } else {
                    "-r--r--r--"
                };
                println!("{mode} {size:>12} {p}")
            }
            EntryKind::Symlink { target } => println!("lrwxrwxrwx {:>12} {p} -> {target}", 0),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn info(dir: &DataDir, path: &str) -> Outcome {
    let store = open(dir, None)?;
    let row = store.lookup(path)?;
    print!("{}", row.narinfo);
    println!("UploadedAt: {}", row.uploaded_at);
    let full = format!("{}/{}", dir.store_dir, row.store_path);
    for (name, p) in store.pins()? {
        if p == full {
            println!("Pin: {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())
}
