//! `pcr`: the read-only inspection tool — cluster status, workers, VMs,
//! generations and projects from the control plane, as aligned tables
//! (colour only on a terminal) or `--json`. `status`, `vms` and
//! `generation` show every project (with a PROJECT column) unless
//! `--project` picks one. `history`, `diff`, `events`, `vm` and `logs`
//! live in `cli::inspect`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Args as ClapArgs, Subcommand};
use cli::inspect;
use commands::model::{ClusterStatusView, Drift, GenerationView, Limits, ProjectStatusView};
use commands::telemetry::now_ms;
use commands::types::ProjectName;

/// The tool's command line: the shared control-plane options and `Cmd`.
type Args = cli::master::Cli<Cmd>;

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Active generations, convergence, worker health and what is unplaced.
    Status(StatusArgs),
    /// Every worker with health and free resources.
    Workers(WorkersArgs),
    /// Every VM: project, placement, desired vs observed hash, drift, metrics.
    Vms(Filter),
    /// The active generation of each project and the ones published before it.
    Generation(Filter),
    /// Every project: quota, usage, active generation and convergence.
    Projects,
    /// Each project's generations, newest first: commit, author, message,
    /// CI job, when published and how long until converged.
    History(Filter),
    /// What generation B changed against generation A: the VMs added,
    /// replaced (another content hash) and removed.
    Diff(DiffArgs),
    /// The control plane's event log, newest last: generations published
    /// and converged, VMs placed, replaced, removed, failed or unplaced,
    /// workers joining or going silent (with why).
    Events(EventsArgs),
    /// One VM: placement, worker, state, drift, its spec, and its latest events.
    Vm(VmArgs),
    /// A VM's serial console, read from its worker through the control
    /// plane (needs an admin token).
    Logs(LogsArgs),
    /// Scan a repository with autonix and write its flake.nix and Procurator
    /// cluster file (procurator.nix); needs no control plane.
    Init(cli::init::InitArgs),
}

/// Which project to show.
#[derive(Debug, ClapArgs)]
struct Filter {
    /// Show only this project's VMs and generations (default: every
    /// project, with a PROJECT column).
    #[arg(long)]
    project: Option<ProjectName>,
}

/// `diff A B`.
#[derive(Debug, ClapArgs)]
struct DiffArgs {
    /// The older generation number.
    a: u64,
    /// The newer generation number.
    b: u64,
    /// The project (default: the only project with generations).
    #[arg(long)]
    project: Option<ProjectName>,
}

/// `events`: which project, how many, and whether to keep watching.
#[derive(Debug, ClapArgs)]
struct EventsArgs {
    #[command(flatten)]
    filter: Filter,
    /// How many of the newest events to show.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Keep printing new events as they happen (polled every --interval
    /// seconds) until interrupted.
    #[arg(long)]
    watch: bool,
    /// Seconds between two polls with --watch.
    #[arg(long, default_value_t = 2, requires = "watch")]
    interval: u64,
}

/// `vm NAME`.
#[derive(Debug, ClapArgs)]
struct VmArgs {
    /// The VM's name.
    name: String,
    /// Its project (default: the only project with a VM of that name).
    #[arg(long)]
    project: Option<ProjectName>,
    /// How many of its latest events to show.
    #[arg(long, default_value_t = 10)]
    events: usize,
}

/// `logs NAME`.
#[derive(Debug, ClapArgs)]
struct LogsArgs {
    /// The VM's name.
    name: String,
    /// Its project (default: the only project with a VM of that name).
    #[arg(long)]
    project: Option<ProjectName>,
    /// How many of the last console lines to show.
    #[arg(long, default_value_t = 100)]
    lines: u32,
    /// Keep printing new console lines until interrupted.
    #[arg(long, short = 'f')]
    follow: bool,
}

/// `status`: which project, and whether to keep watching.
#[derive(Debug, ClapArgs)]
struct StatusArgs {
    #[command(flatten)]
    filter: Filter,
    /// Keep showing the status, fetched again every --interval seconds,
    /// until interrupted (on a terminal the screen is redrawn in place).
    #[arg(long)]
    watch: bool,
    /// Seconds between two fetches with --watch.
    #[arg(long, default_value_t = 2, requires = "watch")]
    interval: u64,
}

/// `workers`: how many columns.
#[derive(Debug, ClapArgs)]
struct WorkersArgs {
    /// Also show what the scheduler allocated on each worker (the used side
    /// of FREE) and what the worker reports: load average and memory used.
    #[arg(long)]
    wide: bool,
}

/// Keeps only `project`'s generations, VMs and unplaced VMs (workers stay:
/// they are shared). Convergence is recomputed over what is left.
fn only_project(s: &mut ClusterStatusView, project: &ProjectName) {
    let p = project.as_str();
    s.generations.retain(|g| g.project == p);
    s.vms.retain(|v| v.project == p);
    s.unplaced.retain(|u| u.project == p);
    s.rollouts.retain(|r| r.project == p);
    s.convergence_percent = commands::model::convergence_percent(&s.vms);
}

/// Colours, only when stdout is a terminal and NO_COLOR is unset.
struct Style {
    on: bool,
}

impl Style {
    fn detect() -> Self {
        Style {
            on: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }
    fn paint(&self, s: &str, code: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
    fn good(&self, s: &str) -> String {
        self.paint(s, "32")
    }
    fn warn(&self, s: &str) -> String {
        self.paint(s, "33")
    }
    fn bad(&self, s: &str) -> String {
        self.paint(s, "31")
    }
    fn bold(&self, s: &str) -> String {
        self.paint(s, "1")
    }
}

/// Width of a cell as displayed: escape sequences take no room.
fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut in_esc = false;
    for c in s.chars() {
        match (in_esc, c) {
            (false, '\x1b') => in_esc = true,
            (true, 'm') => in_esc = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

/// Left-aligned columns separated by two spaces; no trailing blanks.
fn table(header: &[&str], rows: &[Vec<String>], style: &Style) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(visible_len(c));
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i != last {
                out.push_str(&" ".repeat(widths[i] - visible_len(c) + 2));
            }
        }
        out.push('\n');
    };
    line(header.iter().map(|h| style.bold(h)).collect(), &mut out);
    for r in rows {
        line(r.clone(), &mut out);
    }
    out
}

fn age(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..120_000 => format!("{}s", ms / 1000),
        120_000..7_200_000 => format!("{}m", ms / 60_000),
        _ => format!("{}h", ms / 3_600_000),
    }
}

fn drift_cell(d: Drift, style: &Style) -> String {
    let s = d.to_string();
    match d {
        Drift::Converged => style.good(&s),
        Drift::Pending => style.warn(&s),
        Drift::Drifted | Drift::Orphaned | Drift::Failed => style.bad(&s),
    }
}

fn render_status(s: &ClusterStatusView, style: &Style) -> String {
    let mut out = String::new();
    if s.generations.is_empty() {
        out.push_str("generation:  none published\n");
    }
    for g in &s.generations {
        out.push_str(&format!(
            "generation:  {}/{} (commit {}){}\n",
            g.project,
            g.number,
            g.commit,
            if g.rollout.is_empty() {
                String::new()
            } else {
                format!(", {}", g.rollout)
            }
        ));
    }
    if !s.generations.is_empty() {
        let pct = format!("{:.1}%", s.convergence_percent);
        let pct = if s.convergence_percent >= 100.0 {
            style.good(&pct)
        } else {
            style.warn(&pct)
        };
        out.push_str(&format!("converged:   {pct}\n"));
    }
    let healthy = s.workers.iter().filter(|w| w.healthy).count();
    let ws = format!("{healthy}/{} healthy", s.workers.len());
    out.push_str(&format!(
        "workers:     {}\n",
        if healthy == s.workers.len() {
            style.good(&ws)
        } else {
            style.bad(&ws)
        }
    ));
    // Name each dead worker: a count alone sends the user hunting.
    for w in s.workers.iter().filter(|w| !w.healthy) {
        out.push_str(&format!(
            "  {} unhealthy: last seen {} ago\n",
            style.bad(&w.worker_id),
            age(w.last_seen_ms_ago)
        ));
    }
    let count = |d: Drift| s.vms.iter().filter(|v| v.drift == d).count();
    out.push_str(&format!(
        "vms:         {} desired, {} converged, {} pending, {} drifted, {} failed, {} orphaned\n",
        s.vms.iter().filter(|v| v.drift != Drift::Orphaned).count(),
        count(Drift::Converged),
        count(Drift::Pending),
        count(Drift::Drifted),
        count(Drift::Failed),
        count(Drift::Orphaned),
    ));
    out.push_str(&format!("unplaced:    {}\n", s.unplaced.len()));
    for u in &s.unplaced {
        let name = format!("{}/{}", u.project, u.name);
        out.push_str(&format!("  {}: {}\n", style.bad(&name), u.reason));
    }
    out.push_str(&render_rollouts(s, style));
    out
}

/// One line per rollout not yet done: group, batch i/n, healthy/total,
/// and why it paused or reverted.
fn render_rollouts(s: &ClusterStatusView, style: &Style) -> String {
    let mut out = String::new();
    if s.rollouts.is_empty() {
        return out;
    }
    out.push_str(&format!("rollouts:    {}\n", s.rollouts.len()));
    for r in &s.rollouts {
        let state = match r.state.as_str() {
            "rolling" => style.warn(&r.state),
            _ => style.bad(&r.state),
        };
        out.push_str(&format!(
            "  {}/{} generation {}: {state}, batch {}/{}, {}/{} healthy{}\n",
            r.project,
            r.group,
            r.generation,
            r.batch,
            r.batches,
            r.healthy,
            r.total,
            if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", r.reason)
            }
        ));
    }
    out
}

fn render_workers(s: &ClusterStatusView, wide: bool, style: &Style) -> String {
    let rows: Vec<Vec<String>> = s
        .workers
        .iter()
        .map(|w| {
            let free = w.free();
            let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut row = vec![
                w.worker_id.clone(),
                w.address.clone(),
                if w.healthy {
                    style.good("healthy")
                } else {
                    style.bad("unhealthy")
                },
                age(w.last_seen_ms_ago),
                format!("{}/{}", free.cpu, w.capacity.cpu),
                format!("{}/{}", free.memory_mb, w.capacity.memory_mb),
            ];
            if wide {
                row.extend([
                    format!("{}/{}", w.allocated.cpu, w.capacity.cpu),
                    format!("{}/{}", w.allocated.memory_mb, w.capacity.memory_mb),
                    format!("{:.2}", w.metrics.load_average),
                    w.metrics.memory_used_mb.to_string(),
                ]);
            }
            row.extend([
                w.vm_count.to_string(),
                w.observed_generation.to_string(),
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels.join(",")
                },
            ]);
            row
        })
        .collect();
    let mut header = vec![
        "WORKER",
        "ADDRESS",
        "HEALTH",
        "SEEN",
        "CPU FREE",
        "MEM FREE (MiB)",
    ];
    if wide {
        header.extend(["CPU ALLOC", "MEM ALLOC (MiB)", "LOAD", "MEM USED (MiB)"]);
    }
    header.extend(["VMS", "GEN", "LABELS"]);
    table(&header, &rows, style)
}

/// `with_project`: a PROJECT column first (when no `--project` filters).
fn render_vms(s: &ClusterStatusView, with_project: bool, style: &Style) -> String {
    if s.vms.is_empty() && s.unplaced.is_empty() {
        return "No VMs\n".into();
    }
    let rows: Vec<Vec<String>> = s
        .vms
        .iter()
        .map(|v| {
            let mut row = Vec::with_capacity(10);
            if with_project {
                row.push(v.project.clone());
            }
            row.extend([
                v.name.clone(),
                cli::output::or_dash(&v.vm_id),
                if v.worker_id.is_empty() {
                    "-".into()
                } else {
                    v.worker_id.clone()
                },
                v.state_word(),
                cli::output::health(v.health),
                drift_cell(v.drift, style),
                cli::output::short_hash(&v.desired_hash),
                cli::output::short_hash(&v.observed_hash),
                format!("{:.1}", v.metrics.cpu_percent),
                format!("{:.1}", v.metrics.rss_bytes as f64 / (1024.0 * 1024.0)),
            ]);
            row
        })
        .collect();
    let header = [
        "PROJECT",
        "NAME",
        "ID",
        "WORKER",
        "STATE",
        "HEALTH",
        "DRIFT",
        "DESIRED",
        "OBSERVED",
        "CPU%",
        "RSS (MiB)",
    ];
    let mut out = table(&header[usize::from(!with_project)..], &rows, style);
    for u in &s.unplaced {
        let name = format!("{}/{}", u.project, u.name);
        out.push_str(&format!("unplaced {}: {}\n", style.bad(&name), u.reason));
    }
    out
}

/// A quota figure, `-` when unlimited.
fn limit(n: u64, unlimited: bool) -> String {
    if unlimited { "-".into() } else { n.to_string() }
}

fn render_projects(ps: &[ProjectStatusView], style: &Style) -> String {
    if ps.is_empty() {
        return "no project known\n".into();
    }
    let rows: Vec<Vec<String>> = ps
        .iter()
        .map(|p| {
            let used_of =
                |used: u64, quota: u64, max: u64| format!("{used}/{}", limit(quota, quota == max));
            let Limits {
                cpu,
                memory_mb,
                vms,
            } = p.quota;
            let pct = format!("{:.1}%", p.convergence_percent);
            vec![
                p.project.clone(),
                used_of(u64::from(p.usage.cpu), u64::from(cpu), u64::from(u32::MAX)),
                used_of(p.usage.memory_mb, memory_mb, u64::MAX),
                used_of(u64::from(p.usage.vms), u64::from(vms), u64::from(u32::MAX)),
                p.generation
                    .as_ref()
                    .map_or("-".into(), |g| g.number.to_string()),
                if p.convergence_percent >= 100.0 {
                    style.good(&pct)
                } else {
                    style.warn(&pct)
                },
                p.unplaced.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "PROJECT",
            "CPU",
            "MEM (MiB)",
            "VMS",
            "GEN",
            "CONVERGED",
            "UNPLACED",
        ],
        &rows,
        style,
    )
}

/// `active`: each project's active generation; `with_project` adds the
/// PROJECT column.
fn render_generations(
    active: &[GenerationView],
    gens: &[GenerationView],
    with_project: bool,
    style: &Style,
) -> String {
    let now = commands::telemetry::now_ms();
    let rows: Vec<Vec<String>> = gens
        .iter()
        .map(|g| {
            let is_active = active
                .iter()
                .any(|a| a.project == g.project && a.number == g.number);
            let mut row = Vec::with_capacity(6);
            if with_project {
                row.push(g.project.clone());
            }
            row.extend([
                if is_active {
                    style.good(&format!("{} *", g.number))
                } else {
                    g.number.to_string()
                },
                g.commit.clone(),
                cli::output::short_hash(&g.intent_hash),
                g.vm_count.to_string(),
                format!("{} ago", age(now.saturating_sub(g.published_at_ms))),
                if g.converged_at_ms == 0 {
                    "-".into()
                } else {
                    format!("{} ago", age(now.saturating_sub(g.converged_at_ms)))
                },
                if g.job_id == 0 {
                    "-".into()
                } else {
                    g.job_id.to_string()
                },
            ]);
            row
        })
        .collect();
    if rows.is_empty() {
        return "no generation published\n".into();
    }
    let header = [
        "PROJECT",
        "GENERATION",
        "COMMIT",
        "INTENT",
        "VMS",
        "PUBLISHED",
        "CONVERGED",
        "JOB",
    ];
    table(&header[usize::from(!with_project)..], &rows, style)
}

/// Everything `pcr` can fail with: a connection, login or call error, or
/// something named that does not exist.
type CliError = cli::inspect::InspectError;

async fn real_main(args: Args) -> Result<String, CliError> {
    let master = args.master.connect().await?;
    let style = Style::detect();
    let out = match args.command {
        Cmd::Status(a) => {
            let show = |mut s: ClusterStatusView| {
                if let Some(p) = &a.filter.project {
                    only_project(&mut s, p);
                }
                if args.master.json {
                    to_json(&s)
                } else {
                    render_status(&s, &style)
                }
            };
            if a.watch {
                // Until interrupted; a failed fetch ends it with the error.
                let clear = std::io::stdout().is_terminal();
                loop {
                    let text = show(master.status().await?);
                    if clear {
                        cli::output::print_str("\x1b[H\x1b[2J");
                    }
                    cli::output::print_str(&text);
                    if !clear {
                        cli::output::print_str("\n");
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(a.interval)).await;
                }
            }
            show(master.status().await?)
        }
        Cmd::Workers(w) => {
            let s = master.status().await?;
            if args.master.json {
                to_json(&s.workers)
            } else {
                render_workers(&s, w.wide, &style)
            }
        }
        Cmd::Vms(f) => {
            let mut s = master.status().await?;
            if let Some(p) = &f.project {
                only_project(&mut s, p);
            }
            if args.master.json {
                to_json(&serde_json::json!({ "vms": s.vms, "unplaced": s.unplaced }))
            } else {
                render_vms(&s, f.project.is_none(), &style)
            }
        }
        // main runs `init` itself, before any connection is made.
        Cmd::Init(_) => String::new(),
        Cmd::Generation(f) => {
            let mut s = master.status().await?;
            if let Some(p) = &f.project {
                only_project(&mut s, p);
            }
            let mut gens = master
                .generations(f.project.as_ref().map(ProjectName::as_str))
                .await?;
            // Newest first, in the table and in --json alike.
            gens.reverse();
            if args.master.json {
                to_json(&serde_json::json!({ "active": s.generations, "generations": gens }))
            } else {
                render_generations(&s.generations, &gens, f.project.is_none(), &style)
            }
        }
        Cmd::Projects => {
            let ps = master.projects().await?;
            if args.master.json {
                to_json(&ps)
            } else {
                render_projects(&ps, &style)
            }
        }
        Cmd::History(f) => {
            let gens = inspect::history(&master, f.project.as_ref()).await?;
            if args.master.json {
                to_json(&gens)
            } else {
                inspect::render_history(&gens, f.project.is_none(), now_ms())
            }
        }
        Cmd::Diff(d) => {
            let diff = inspect::diff_generations(&master, d.project.as_ref(), d.a, d.b).await?;
            if args.master.json {
                to_json(&diff)
            } else {
                inspect::render_diff(&diff)
            }
        }
        Cmd::Events(e) => {
            let project = e.filter.project.as_ref();
            let events = inspect::events_after(&master, project, 0).await?;
            let shown = &events[events.len().saturating_sub(e.limit)..];
            let text = if args.master.json {
                to_json(shown)
            } else {
                inspect::render_events(&events, e.limit, now_ms())
            };
            if e.watch {
                cli::output::print_str(&text);
                let after = events.last().map_or(0, |l| l.id);
                let every = std::time::Duration::from_secs(e.interval);
                inspect::watch_events(&master, project, after, every, args.master.json).await?;
            }
            text
        }
        Cmd::Vm(v) => {
            let view = inspect::vm(&master, v.project.as_ref(), &v.name, v.events).await?;
            if args.master.json {
                to_json(&view)
            } else {
                inspect::render_vm(&view, now_ms())
            }
        }
        Cmd::Logs(l) => {
            if l.follow {
                let every = std::time::Duration::from_millis(500);
                inspect::follow_logs(&master, l.project.as_ref(), &l.name, l.lines, every).await?;
            }
            let tail = inspect::logs(&master, l.project.as_ref(), &l.name, l.lines).await?;
            inspect::render_tail(&tail, args.master.json)
        }
    };
    master.close().await;
    Ok(out)
}

use cli::inspect::to_json;

fn main() -> ExitCode {
    let args = Args::parse_as(
        "pcr",
        "Inspect a Procurator cluster (read-only), or set a repository up for it (init)",
    );
    // `init` works on a local directory: no control plane, no runtime.
    if let Cmd::Init(init) = &args.command {
        return match cli::init::run(init) {
            Ok(report) => {
                cli::output::print_str(&report);
                ExitCode::SUCCESS
            }
            Err(e) => cli::output::fail(cli::output::error_chain(&e)),
        };
    }
    match commands::rpc::block_on_local(real_main(args)) {
        Ok(out) => {
            cli::output::print_str(&out);
            ExitCode::SUCCESS
        }
        // One line with the whole cause chain ("cannot connect to X:
        // Connection refused"), as every Procurator CLI prints it.
        Err(e) => cli::output::fail(cli::output::error_chain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_ignore_colour_codes() {
        let style = Style { on: true };
        let rows = vec![
            vec!["a".into(), style.good("ok")],
            vec!["longer".into(), "x".into()],
        ];
        let t = table(&["N", "S"], &rows, &Style { on: false });
        assert_eq!(t, "N       S\na       \u{1b}[32mok\u{1b}[0m\nlonger  x\n");
        assert_eq!(visible_len(&style.bad("abc")), 3);
    }

    #[test]
    fn rollouts_show_group_batch_health_and_why() {
        let mut s = ClusterStatusView {
            generations: Vec::new(),
            convergence_percent: 100.0,
            vms: Vec::new(),
            workers: Vec::new(),
            unplaced: Vec::new(),
            rollouts: Vec::new(),
        };
        assert_eq!(render_rollouts(&s, &Style { on: false }), "");
        let r = |project: &str, state: &str, reason: &str| commands::model::RolloutStatusView {
            project: project.into(),
            group: "web".into(),
            generation: 7,
            batch: 2,
            batches: 5,
            healthy: 2,
            total: 5,
            state: state.into(),
            reason: reason.into(),
        };
        s.rollouts = vec![
            r("shop", "rolling", ""),
            r(
                "blog",
                "paused",
                "web-2 unhealthy: no READY within 30000 ms",
            ),
        ];
        assert_eq!(
            render_rollouts(&s, &Style { on: false }),
            "rollouts:    2\n  shop/web generation 7: rolling, batch 2/5, 2/5 healthy\n  \
             blog/web generation 7: paused, batch 2/5, 2/5 healthy: web-2 unhealthy: no READY within 30000 ms\n"
        );
        only_project(&mut s, &"blog".parse().unwrap());
        assert_eq!(s.rollouts.len(), 1);
    }

    #[test]
    fn ages_shorten() {
        assert_eq!(age(999), "999ms");
        assert_eq!(age(61_000), "61s");
    }
}
