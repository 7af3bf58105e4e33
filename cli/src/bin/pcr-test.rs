//! `pcr-test`: manual Master RPC for testing and debugging — publish a
//! generation from spec files, read a worker's assignment, the cluster
//! status, and call a worker through the control plane (`getWorker`).
//! In production Git is the only write path; this tool bypasses it.

// Printing the replies on stdout is this tool's whole output.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use commands::types::{ProjectName, VmSpec};

/// The tool's command line: the shared control-plane options and `Cmd`.
type Args = cli::master::Cli<Cmd>;

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Publish a generation of one project: the VmSpec JSON files given with
    /// --spec and/or every *.json file in --specs DIR (each file one spec
    /// object or an array of them). Other projects' VMs are not touched; a
    /// generation without VMs (deleting the project's VMs) needs
    /// --allow-empty.
    PublishState {
        /// The project the generation belongs to.
        #[arg(long, default_value = commands::types::DEFAULT_PROJECT)]
        project: ProjectName,
        /// The commit the generation was built from (shown by `pcr generation`).
        #[arg(long)]
        commit: String,
        /// The generation number: higher than the project's active one, or
        /// equal with the same intent hash (an idempotent re-publish).
        #[arg(long)]
        generation: u64,
        /// Default: sha256 of the specs (sorted by name, as JSON).
        #[arg(long)]
        intent_hash: Option<String>,
        /// VmSpec JSON files (`--spec a.json b.json` or repeated).
        #[arg(long = "spec", num_args = 1..)]
        spec: Vec<PathBuf>,
        /// A directory: every *.json file in it is read, in name order.
        #[arg(long)]
        specs: Option<PathBuf>,
        /// Publish even when the files hold no VM: the generation then
        /// removes every VM of the project.
        #[arg(long)]
        allow_empty: bool,
    },
    /// A worker's assignment (long-poll: waits while nothing is newer than
    /// --last-generation/--last-revision).
    GetAssignment {
        /// The worker id (as `pcr workers` lists it).
        worker: String,
        /// The generation the worker already has (0: none).
        #[arg(long, default_value_t = 0)]
        last_generation: u64,
        /// The assignment revision the worker already has (0: none).
        #[arg(long, default_value_t = 0)]
        last_revision: u64,
    },
    /// The whole cluster status.
    ClusterStatus,
    /// Generations published since the control plane started, newest first.
    Generations {
        /// Only this project's (default: every project's).
        #[arg(long)]
        project: Option<ProjectName>,
    },
    /// Call a worker through the control plane.
    Worker {
        /// The worker id (as `pcr workers` lists it).
        worker: String,
        #[command(subcommand)]
        call: WorkerCall,
    },
}

#[derive(Debug, Subcommand)]
enum WorkerCall {
    /// The worker's status.
    Read,
    /// The VMs the worker runs.
    ListVms,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Connect(#[from] cli::master::ConnectError),
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spec(#[from] cli::specs::SpecFileError),
    #[error(
        "no VMs in {files}; to remove every VM of project {project} publish with --allow-empty"
    )]
    Empty { files: String, project: ProjectName },
    #[error("worker {worker} is not connected ({seen})")]
    WorkerGone { worker: String, seen: String },
    #[error(transparent)]
    Client(#[from] commands::client::ClientError),
}

fn load_specs(files: &[PathBuf], dir: Option<&Path>) -> Result<Vec<VmSpec>, CliError> {
    let mut paths: Vec<PathBuf> = files.to_vec();
    if let Some(dir) = dir {
        let rd = std::fs::read_dir(dir).map_err(|source| CliError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let mut found: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        found.sort();
        paths.extend(found);
    }
    let mut specs = Vec::new();
    for p in &paths {
        specs.extend(cli::specs::read_spec_file(p)?);
    }
    Ok(specs)
}

/// Names the files a publish read, for the "no VMs" error.
fn describe(files: &[PathBuf], dir: Option<&Path>) -> String {
    let mut names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    if let Some(d) = dir {
        names.push(format!("{} (every *.json)", d.display()));
    }
    names.join(", ")
}

/// A worker call that failed because the worker's connection is gone is
/// named as such, with when the control plane last heard from the worker,
/// instead of capnp's "Peer disconnected".
async fn worker_call<T>(
    master: &commands::client::MasterClient,
    worker: &str,
    r: Result<T, commands::client::ClientError>,
) -> Result<T, CliError> {
    match r {
        Err(e) if e.is_disconnected() => {
            let seen = match master.status().await {
                Ok(s) => s.workers.iter().find(|w| w.worker_id == worker).map_or(
                    "the control plane no longer lists it".to_owned(),
                    |w| {
                        format!(
                            "last seen {} ago",
                            cli::output::duration_ms(w.last_seen_ms_ago)
                        )
                    },
                ),
                Err(_) => "its connection to the control plane is closed".to_owned(),
            };
            Err(CliError::WorkerGone {
                worker: worker.to_owned(),
                seen,
            })
        }
        r => Ok(r?),
    }
}

// Human lines shorten hashes as every table does; --json keeps them whole.
use cli::output::{print_as, print_lines, short_hash};

/// The specs `publish-state` sends, read and checked before connecting so
/// bad input fails fast, whatever the server.
fn publish_specs(cmd: &Cmd) -> Result<Vec<VmSpec>, CliError> {
    let Cmd::PublishState {
        project,
        spec,
        specs,
        allow_empty,
        ..
    } = cmd
    else {
        return Ok(Vec::new());
    };
    if spec.is_empty() && specs.is_none() {
        return Err(CliError::Usage(
            "give --spec FILE (repeatable) or --specs DIR".into(),
        ));
    }
    let list = load_specs(spec, specs.as_deref())?;
    if list.is_empty() && !allow_empty {
        return Err(CliError::Empty {
            files: describe(spec, specs.as_deref()),
            project: project.clone(),
        });
    }
    Ok(list)
}

async fn real_main(args: Args) -> Result<(), CliError> {
    let list = publish_specs(&args.command)?;
    let master = args.master.connect().await?;
    match args.command {
        Cmd::PublishState {
            project,
            commit,
            generation,
            intent_hash: intent,
            ..
        } => {
            let intent =
                intent.unwrap_or_else(|| commands::types::intent_hash(&list).hash.into_string());
            let o = master
                .publish(project.as_str(), &commit, generation, &intent, &list)
                .await?;
            print_as(args.master.json, &o, |o| {
                let what = if o.noop {
                    "unchanged (already active)"
                } else {
                    "published"
                };
                println!(
                    "project {} generation {}: {what}; {} placed, {} unplaced",
                    o.project,
                    o.generation,
                    o.placed,
                    o.unplaced.len()
                );
                for u in &o.unplaced {
                    println!("unplaced {}: {}", u.name, u.reason);
                }
            });
        }
        Cmd::GetAssignment {
            worker,
            last_generation,
            last_revision,
        } => {
            let a = master
                .get_assignment(&worker, last_generation, last_revision)
                .await?;
            print_as(args.master.json, &a, |a| {
                println!(
                    "worker {} generation {} revision {} changed {} ({} VMs)",
                    a.worker_id,
                    a.generation,
                    a.revision,
                    a.changed,
                    a.vms.len()
                );
                for s in &a.vms {
                    println!(
                        "{}/{} {} cpu={} memoryMb={}",
                        s.project(),
                        s.name(),
                        short_hash(s.content_hash()),
                        s.cpu(),
                        s.memory_mb()
                    );
                }
            });
        }
        Cmd::ClusterStatus => {
            let s = master.status().await?;
            print_as(args.master.json, &s, |s| {
                if s.generations.is_empty() {
                    println!("no generation published");
                }
                for g in &s.generations {
                    println!(
                        "project {} generation {} commit {}",
                        g.project, g.number, g.commit
                    );
                }
                println!("converged {:.0}%", s.convergence_percent);
                for w in &s.workers {
                    println!(
                        "worker {} {} healthy={} vms={}",
                        w.worker_id, w.address, w.healthy, w.vm_count
                    );
                }
                for v in &s.vms {
                    println!(
                        "vm {}/{} worker={} desired={} observed={} drift={}",
                        v.project,
                        v.name,
                        v.worker_id,
                        short_hash(&v.desired_hash),
                        short_hash(&v.observed_hash),
                        v.drift
                    );
                }
                for u in &s.unplaced {
                    println!("unplaced {}/{}: {}", u.project, u.name, u.reason);
                }
            });
        }
        Cmd::Generations { project } => {
            let mut gens = master
                .generations(project.as_ref().map(ProjectName::as_str))
                .await?;
            // Newest first, as `pcr generation` lists them.
            gens.reverse();
            print_lines(args.master.json, &gens, |g| {
                format!(
                    "{} {} {} {} vms={}",
                    g.project,
                    g.number,
                    g.commit,
                    short_hash(&g.intent_hash),
                    g.vm_count
                )
            });
        }
        Cmd::Worker { worker, call } => {
            let w = master.worker(&worker).await?;
            match call {
                WorkerCall::Read => {
                    let st = worker_call(&master, &worker, w.read().await).await?;
                    print_as(args.master.json, &st, |st| {
                        println!(
                            "worker {} {} vms={} cpu={} memoryMb={} version={}",
                            st.worker_id,
                            st.address,
                            st.vm_count,
                            st.capacity.cpu,
                            st.capacity.memory_mb,
                            st.version
                        );
                    });
                }
                WorkerCall::ListVms => {
                    let vms = worker_call(&master, &worker, w.list_vms().await).await?;
                    print_lines(args.master.json, &vms, |v| {
                        let pid = v.pid.unwrap_or(0);
                        format!(
                            "{} {}/{} {} {} pid={pid}",
                            v.id,
                            v.project,
                            v.name,
                            short_hash(&v.content_hash),
                            v.state
                        )
                    });
                }
            }
        }
    }
    master.close().await;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse_as("pcr-test", "Manual Master RPC (testing and debugging)");
    match commands::rpc::block_on_local(real_main(args)) {
        Ok(()) => ExitCode::SUCCESS,
        // One line with the whole cause chain ("cannot connect to X:
        // Connection refused"), as every Procurator CLI prints it.
        Err(e) => cli::output::fail(cli::output::error_chain(&e)),
    }
}
