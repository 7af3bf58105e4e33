//! The job runner: one job at a time (nix builds share one store and two
//! cores), each a fixed pipeline of named steps: `fetch` (mirror and check
//! out the commit), `evaluate` (`procurator.vmSpecs`), `build`
//! (`procurator.closure`), `upload` (copy the closure to the cache, zstd,
//! and pin it) and `publish` (hand the generation to the control plane and
//! record it). Each step is a function with typed input and output that
//! writes its own lines to the job log; `Runner::pipeline` only chains them
//! and times them. Any failure stops the pipeline before publish, so a bad
//! push changes nothing (all or nothing). Between build and upload the
//! deploy rights (`deploy`) decide whether the push may publish, and for
//! which project; a push that may not ends `built-not-deployed`.
//!
//! Hiccups are retried inside the job: a step that fails for a transient
//! reason (`JobError::is_transient`: the cache unreachable or answering
//! 5xx) runs again after a backoff, up to `RetryPolicy::retries` times,
//! each attempt in the log; a deterministic failure (an eval error, a
//! build failure, a 4xx) ends the job at once. A job can be cancelled
//! (`Cancels`) until it reaches publish: its step is dropped, which stops
//! nix's process group, and it ends `cancelled`.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use commands::types::VmSpec;
use repo_outils::flake::InputError;
use repo_outils::git::{self, GitError, TreeLimits};
use repo_outils::nix::{Nix, NixError};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{Claimed, Db, DbError, Generation, Job, Timings};
use crate::deploy::{Decision, DeployRights};
use crate::pin::PinError;
use crate::publisher::{PublishError, Publisher};

/// The flake contract (context/architecture.md): one attribute with every
/// VM's spec, one build whose closure holds every path they boot.
pub const SPECS_ATTR: &str = "procurator.vmSpecs";
pub const CLOSURE_ATTR: &str = "procurator.closure";

/// A push without a flake: the job's error, naming what CI evaluates.
pub const NO_FLAKE: &str = "no flake.nix at the repository root; CI evaluates \
     procurator.vmSpecs and procurator.closure of it";

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("reading the pushed repository failed")]
    Git(#[from] GitError),
    #[error("the flake's inputs are refused")]
    Inputs(#[from] InputError),
    /// Said in full (repohub matches its first words to offer "Generate
    /// flake"): what CI looks for, so the pusher knows what to add.
    #[error("{NO_FLAKE}")]
    NoFlake,
    /// The nix failures carry only their summary line: nix's whole output
    /// is already in the job log, so it is not kept as a source to print
    /// again.
    #[error("evaluating {attr} failed: {summary}")]
    Eval { attr: &'static str, summary: String },
    #[error("{attr} is not a valid VmSpec list: {reason}")]
    Specs { attr: &'static str, reason: String },
    #[error("building {attr} failed: {summary}")]
    Build { attr: &'static str, summary: String },
    #[error("uploading the closure to the cache failed: {summary}")]
    Upload { summary: String },
    /// The upload failed and the cache, asked right after, was not
    /// reachable or answered 5xx: worth another attempt.
    #[error("uploading the closure to the cache failed ({why}): {summary}")]
    CacheUnavailable { why: String, summary: String },
    #[error("cancelled during {step}")]
    Cancelled { step: &'static str },
    /// The pin's failure is shown inline (it is not a `source`), so the
    /// job's one-line error says why the cache refused.
    #[error("pinning the closure in the cache failed: {0}")]
    Pin(PinError),
    #[error("publishing the generation failed")]
    Publish(#[from] PublishError),
    #[error("job bookkeeping failed")]
    Db(#[from] DbError),
    #[error("cannot prepare {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("background task failed: {0}")]
    Join(String),
}

impl JobError {
    /// Whether the failure says nothing about the push and may pass if
    /// the step runs again: the cache down, restarting or overloaded.
    /// Evaluation and build failures, refusals (4xx) and bad specs are the
    /// push's own and fail the same way every time. (A control plane that
    /// is away does not fail a job at all: `publish` records the
    /// generation and the publisher hands it over on reconnect.)
    pub fn is_transient(&self) -> bool {
        match self {
            JobError::CacheUnavailable { .. } => true,
            JobError::Pin(PinError::Http(e)) => http_is_transient(e),
            JobError::Pin(PinError::Refused { status, .. }) => status.is_server_error(),
            JobError::Publish(PublishError::Unavailable(_)) => true,
            _ => false,
        }
    }
}

/// Connection refused or reset, no answer in time: the peer is away, not
/// saying no.
fn http_is_transient(e: &commands::http::HttpError) -> bool {
    use commands::http::HttpError as H;
    matches!(
        e,
        H::Connect { .. } | H::Exchange { .. } | H::Body { .. } | H::Timeout { .. }
    )
}

/// How often and how patiently a transient failure is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: u32,
    /// The wait before the first retry; it doubles each time, capped at
    /// `MAX_BACKOFF`.
    pub backoff: Duration,
}

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl RetryPolicy {
    /// The wait before retry number `n` (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        self.backoff
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(MAX_BACKOFF)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 5,
            backoff: Duration::from_millis(500),
        }
    }
}

/// The running job and the switch that cancels it; shared by the runner
/// (which sets it per job) and the API (`DELETE /jobs/{id}`).
#[derive(Debug, Clone, Default)]
pub struct Cancels {
    state: Arc<std::sync::Mutex<CancelState>>,
}

#[derive(Debug, Default)]
struct CancelState {
    current: Option<(i64, CancellationToken)>,
    /// Jobs the API saw `running` before the runner set them current (it
    /// claims a job, then starts it): cancelled as they start.
    early: std::collections::HashSet<i64>,
}

impl Cancels {
    fn lock(&self) -> std::sync::MutexGuard<'_, CancelState> {
        // The state is two plain fields; a panic cannot leave it half set.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cancels running job `id`, now if the runner is on it, else as soon
    /// as it starts it.
    pub fn cancel(&self, id: i64) {
        let mut st = self.lock();
        match &st.current {
            Some((running, token)) if *running == id => token.cancel(),
            _ => {
                st.early.insert(id);
            }
        }
    }

    fn start(&self, id: i64) -> CancellationToken {
        let token = CancellationToken::new();
        let mut st = self.lock();
        if st.early.remove(&id) {
            token.cancel();
        }
        st.current = Some((id, token.clone()));
        token
    }

    fn end(&self) {
        let mut st = self.lock();
        st.current = None;
        st.early.clear();
    }
}

/// Where closures go: the cache's base URL and its upload token.
#[derive(Clone)]
pub struct CacheTarget {
    pub url: String,
    pub token: Option<String>,
    /// netrc file handing the token to nix (written at start).
    pub netrc: Option<PathBuf>,
}

#[derive(Debug)]
pub struct Runner {
    pub db: Arc<Db>,
    /// nix for the trusted steps: copying the closure to the cache (with
    /// the upload token's netrc) and querying the store.
    pub nix: Nix,
    /// nix for the pushed flake, which is untrusted code
    /// (`Nix::untrusted`): evaluation, input reading, builds. It never
    /// sees the upload token or the control-plane token.
    pub eval_nix: Nix,
    /// Bounds on the checked-out tree.
    pub tree_limits: TreeLimits,
    /// Bytes a job log may hold before it is truncated.
    pub max_log_bytes: u64,
    pub data_dir: PathBuf,
    pub cache: Option<CacheTarget>,
    pub publisher: Publisher,
    pub deploy: DeployRights,
    pub wake: Arc<Notify>,
    pub retry: RetryPolicy,
    pub cancels: Cancels,
    /// Step durations are observed here when a job ends.
    pub metrics: crate::metrics::CiMetrics,
}

// By hand: the upload token is redacted.
impl std::fmt::Debug for CacheTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheTarget")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("netrc", &self.netrc)
            .finish()
    }
}

/// Where the log of job `id` is written.
pub fn log_path(data_dir: &Path, id: i64) -> PathBuf {
    data_dir.join("logs").join(format!("{id}.log"))
}

pub use commands::types::intent_hash;

/// The one-line reason shown in the job list: for a failed build, the
/// failing builder's line with the last lines of its log (nix's last
/// `error:` is then the generic "1 dependencies of derivation … failed to
/// build", which names the wrong derivation and no cause); otherwise the
/// last line of nix's stderr that starts with `error:`, or the last line.
pub(crate) fn summary(e: &NixError) -> String {
    let text = e.stderr().unwrap_or_default();
    if let Some(line) = builder_failure(text) {
        return line;
    }
    text.lines()
        .rev()
        .find(|l| l.trim_start().starts_with("error:"))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .map_or_else(|| e.to_string(), |l| l.trim().to_owned())
}

/// How many of the failed builder's last log lines the summary carries.
const SUMMARY_LOG_LINES: usize = 3;

/// "builder for '/nix/store/…drv' failed with exit code 1; last log lines:
/// a | b" from nix's report of the first failed builder: its `error:
/// builder for` line and the `> ` lines nix quotes under it.
fn builder_failure(stderr: &str) -> Option<String> {
    let mut lines = stderr.lines().skip_while(|l| {
        !l.trim_start()
            .strip_prefix("error:")
            .is_some_and(|r| r.trim_start().starts_with("builder for "))
    });
    let head = lines.next()?.trim_start().strip_prefix("error:")?.trim();
    let head = head.trim_end_matches(';');
    // In nix's plain log format the quoted log lines follow, indented,
    // until "For full logs". With `-L --log-format internal-json` (how CI
    // builds) nix quotes nothing: the builder's lines came before, each
    // rendered as "<name>> line" (repo_outils::nixlog).
    let mut quoted: Vec<&str> = lines
        .take_while(|l| l.starts_with(' '))
        .filter_map(|l| l.trim_start().strip_prefix('>'))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if quoted.is_empty()
        && let Some(name) = failed_drv_name(head)
    {
        let prefix = format!("{name}> ");
        quoted = stderr
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
    }
    let last = &quoted[quoted.len().saturating_sub(SUMMARY_LOG_LINES)..];
    Some(if last.is_empty() {
        head.to_owned()
    } else {
        format!("{head}; last log lines: {}", last.join(" | "))
    })
}

/// Appends lines to a job's log file as they come (each write goes
/// straight to the file, so followers see it at once). The log is bounded:
/// once `limit` bytes are written, one "log truncated" line says so and
/// further lines are dropped, except the job's final lines
/// ([`JobLog::final_line`]), which are few and short.
#[derive(Debug)]
pub struct JobLog {
    file: std::fs::File,
    written: u64,
    limit: u64,
    truncated: bool,
}

impl JobLog {
    /// Opens (appending to) the log at `path`; what is already there
    /// counts towards `limit` (a re-queued job keeps its first attempt).
    pub fn open(path: &Path, limit: u64) -> std::io::Result<Self> {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let written = file.metadata()?.len();
        Ok(JobLog {
            file,
            written,
            limit,
            truncated: false,
        })
    }

    pub fn line(&mut self, s: &str) {
        if self.truncated {
            return;
        }
        if self.written + s.len() as u64 + 1 > self.limit {
            self.truncated = true;
            self.final_line(&format!(
                "log truncated: this job's output passed the job log limit of {} bytes \
                 (--max-job-log-bytes); the rest is dropped",
                self.limit
            ));
            return;
        }
        self.write(s);
    }

    /// A line written even past the limit: how the job ended.
    pub fn final_line(&mut self, s: &str) {
        self.write(s);
    }

    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    fn write(&mut self, s: &str) {
        // A log write failure must not fail the build; tracing keeps it.
        match writeln!(self.file, "{s}") {
            Ok(()) => self.written += s.len() as u64 + 1,
            Err(e) => tracing::warn!(error = %e, "cannot write job log"),
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Runner {
    /// Runs queued jobs until `shutdown`. A job interrupted by shutdown
    /// stays `running` in SQLite and is re-queued at the next start.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let next = self.db.claim_next();
            let job = match next {
                Ok(Some(claimed)) => claimed,
                Ok(None) => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = self.wake.notified() => {}
                        // Belt and braces: a missed wake-up costs one second.
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot claim a job");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let id = job.job.id;
            let project = self
                .deploy
                .project_of(&job.job.repo, job.job.project.as_deref())
                .unwrap_or_default();
            let span = tracing::info_span!("job", job_id = id, commit = %job.job.commit, project = %project);
            let work = tracing::Instrument::instrument(self.clone().run_job(job), span);
            tokio::select! {
                () = shutdown.cancelled() => {
                    tracing::info!(job_id = id, "shutting down mid-job; it will be re-queued at the next start");
                    return;
                }
                () = work => {}
            }
        }
    }

    async fn run_job(self: Arc<Self>, claimed: Claimed) {
        let job = &claimed.job;
        let path = log_path(&self.data_dir, job.id);
        let mut log = match JobLog::open(&path, self.max_log_bytes) {
            Ok(l) => l,
            Err(e) => {
                let _ = self
                    .db
                    .fail(job.id, &format!("cannot open log {}: {e}", path.display()));
                return;
            }
        };
        let queue_ms =
            (job.started_at_ms.unwrap_or(job.created_at_ms) - job.created_at_ms).max(0) as u64;
        let mut timings = Timings {
            queue_ms: Some(queue_ms),
            ..Timings::default()
        };
        log.line(&format!(
            "job {} for {} {} at {}",
            job.id, job.repo, job.git_ref, job.commit
        ));
        // Each step's time is stored as the step ends, so a page shows a
        // running job's progress (the stage bar) and not only its end.
        self.progress(job.id, &timings);
        let cancel = self.cancels.start(job.id);
        let result = self
            .pipeline(
                job,
                claimed.deploy_ref.as_deref(),
                &cancel,
                &mut log,
                &mut timings,
            )
            .await;
        self.cancels.end();
        let _ = self.db.set_timings(job.id, &timings);
        self.metrics.job_finished(&timings);
        match result {
            Ok(Outcome::Published(project, n)) => {
                log.final_line(&format!("succeeded: generation {n} of project {project}"));
                tracing::info!(generation = n, "job succeeded");
            }
            Ok(Outcome::NotDeployed(why)) => {
                log.final_line(&format!("built, not deployed: {why}"));
                tracing::info!(reason = %why, "job built, not deployed");
            }
            Err(e @ JobError::Cancelled { .. }) => {
                let msg = e.to_string();
                log.final_line(&format!("{msg}: nix was stopped"));
                log.final_line("nothing was published; the active generation is unchanged");
                tracing::info!("job cancelled");
                if let Err(e) = self.db.cancelled(job.id, &msg) {
                    tracing::error!(error = %e, "cannot record the cancellation");
                }
            }
            Err(e) => {
                // The one-line reason recorded for the job: the cause chain.
                let msg = commands::report::error_chain(&e);
                log.final_line(&format!("failed: {msg}"));
                log.final_line("nothing was published; the active generation is unchanged");
                tracing::warn!(error = %msg, "job failed");
                if let Err(e) = self.db.fail(job.id, &msg) {
                    tracing::error!(error = %e, "cannot record the failure");
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.work_dir(job.id));
    }

    /// Stores the step times so far; a failure to store them costs only
    /// the live view, never the job.
    fn progress(&self, id: i64, timings: &Timings) {
        if let Err(e) = self.db.set_timings(id, timings) {
            tracing::warn!(error = %e, "cannot record step timings");
        }
    }

    fn work_dir(&self, id: i64) -> PathBuf {
        self.data_dir.join("work").join(format!("job-{id}"))
    }

    /// The steps in order. Returns the published generation, or why a
    /// push that built may not deploy. `claimed_deploy_ref` is what the push
    /// event said (repohub's word; `deploy` decides what it is worth).
    async fn pipeline(
        &self,
        job: &Job,
        claimed_deploy_ref: Option<&str>,
        cancel: &CancellationToken,
        log: &mut JobLog,
        timings: &mut Timings,
    ) -> Result<Outcome, JobError> {
        let mirror = mirror_dir(&self.data_dir, &job.repo);
        let work_dir = self.work_dir(job.id);
        let checkout = timed(
            &mut timings.fetch_ms,
            cancellable(
                cancel,
                "fetch",
                fetch(
                    &job.repo,
                    &job.commit,
                    &mirror,
                    &work_dir,
                    &self.tree_limits,
                    log,
                ),
            ),
        )
        .await?;
        self.progress(job.id, timings);
        let specs = timed(
            &mut timings.eval_ms,
            cancellable(cancel, "evaluate", evaluate(&self.eval_nix, &checkout, log)),
        )
        .await?;
        self.progress(job.id, timings);
        let closure = timed(
            &mut timings.build_ms,
            cancellable(
                cancel,
                "build",
                build(&self.eval_nix, &checkout, &specs, log),
            ),
        )
        .await?;
        self.progress(job.id, timings);

        let intent = commands::types::intent_hash(&specs);
        let decision = self.deploy.decide(
            &job.repo,
            &job.git_ref,
            job.project.as_deref(),
            claimed_deploy_ref,
        );
        let project = match decision {
            Decision::Publish(p) => p,
            Decision::NotDeployed(why) => {
                let project = self.deploy.project_of(&job.repo, job.project.as_deref());
                self.db.built_not_deployed(
                    job.id,
                    &intent.canonical_json,
                    project.as_deref(),
                    &why,
                )?;
                return Ok(Outcome::NotDeployed(why));
            }
        };
        log.line(&format!("deploying project {project}"));

        // The generation number is chosen before the upload so the pin can
        // carry it.
        let number = self.db.next_generation(
            project.as_str(),
            self.publisher.remote_active(project.as_str()),
        )?;
        timed(
            &mut timings.upload_ms,
            cancellable(
                cancel,
                "upload",
                upload_retried(
                    &self.nix,
                    self.cache.as_ref(),
                    &closure,
                    project.as_str(),
                    number,
                    self.retry,
                    log,
                ),
            ),
        )
        .await?;
        self.progress(job.id, timings);
        // From here on the job runs to its end: a generation the control
        // plane may already hold is recorded, never abandoned halfway.
        let generation = Generation {
            project: project.to_string(),
            number,
            job_id: job.id,
            commit: job.commit.clone(),
            intent_hash: intent.hash,
            closure: closure.paths.join(" "),
            created_at_ms: commands::telemetry::now_ms() as i64,
            specs_json: intent.canonical_json,
        };
        let meta = commands::model::PublishMeta {
            author: checkout.author.clone(),
            message: checkout.summary.clone(),
            job_id: u64::try_from(job.id).unwrap_or(0),
        };
        timed(
            &mut timings.publish_ms,
            publish(&self.publisher, &self.db, &generation, &meta, log),
        )
        .await?;
        Ok(Outcome::Published(project, number))
    }
}

/// How a job that did not fail ended.
#[derive(Debug)]
enum Outcome {
    /// Generation `n` of the project.
    Published(commands::types::ProjectName, i64),
    /// Built and checked; why it may not publish.
    NotDeployed(String),
}

/// Runs one step and, when it succeeds, records how long it took in `slot`
/// (a failed step leaves its timing out, as the job never finished it).
async fn timed<T>(
    slot: &mut Option<u64>,
    step: impl Future<Output = Result<T, JobError>>,
) -> Result<T, JobError> {
    let t = Instant::now();
    let out = step.await?;
    *slot = Some(ms(t.elapsed()));
    Ok(out)
}

/// Deletes the finished jobs that ended more than `retention` ago and
/// their log files; returns how many jobs went. A log that is already
/// gone is not an error.
pub fn prune(db: &Db, data_dir: &Path, retention: Duration) -> Result<usize, DbError> {
    let before = commands::telemetry::now_ms() as i64 - retention.as_millis() as i64;
    let ids = db.prune_finished_before(before)?;
    for id in &ids {
        let path = log_path(data_dir, *id);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(job_id = id, error = %e, path = %path.display(), "cannot remove a pruned job's log");
        }
    }
    Ok(ids.len())
}

/// Runs `step` unless `cancel` fires first, in which case the step is
/// dropped (stopping the nix it runs, see `repo_outils::nix`) and the job
/// fails with `JobError::Cancelled`.
async fn cancellable<T>(
    cancel: &CancellationToken,
    step: &'static str,
    work: impl Future<Output = Result<T, JobError>>,
) -> Result<T, JobError> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(JobError::Cancelled { step }),
        out = work => out,
    }
}

/// After attempt `n` (1-based) of `step` failed with `e`: how long to wait
/// before the next one, written to the log with the failure, or none
/// when `e` is not transient or the retries are used up.
fn retry_after(
    policy: RetryPolicy,
    step: &str,
    n: u32,
    e: &JobError,
    log: &mut JobLog,
) -> Option<Duration> {
    if !e.is_transient() || n > policy.retries {
        return None;
    }
    let wait = policy.delay(n);
    let why = commands::report::error_chain(e);
    log.line(&format!(
        "{step} attempt {n} of {} failed, transient: {why}; retrying in {} ms",
        policy.retries + 1,
        ms(wait)
    ));
    tracing::warn!(step, attempt = n, error = %why, "transient failure, retrying");
    Some(wait)
}

/// Step `upload`, retried while it fails for a transient reason.
async fn upload_retried(
    nix: &Nix,
    cache: Option<&CacheTarget>,
    closure: &Closure,
    project: &str,
    number: i64,
    policy: RetryPolicy,
    log: &mut JobLog,
) -> Result<(), JobError> {
    let mut n = 1;
    loop {
        match upload(nix, cache, closure, project, number, log).await {
            Err(e) => match retry_after(policy, "upload", n, &e, log) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Err(e),
            },
            Ok(()) => return Ok(()),
        }
        n += 1;
    }
}

/// The bare mirror a repository is fetched into: one per repository URL,
/// named by a hash of it so any URL makes a safe directory name.
fn mirror_dir(data_dir: &Path, repo: &str) -> PathBuf {
    data_dir.join("mirrors").join(format!(
        "{}.git",
        &format!("{:x}", Sha256::digest(repo.as_bytes()))[..16]
    ))
}

/// A commit's tree written out as plain files: what the flake is
/// evaluated and built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkout {
    pub dir: PathBuf,
    /// The commit's author name, one line (what `pcr history` shows).
    pub author: String,
    /// The first line of the commit's message.
    pub summary: String,
}

/// The most bytes of an author or message line handed to the control
/// plane (it refuses more than 256).
const META_MAX: usize = 200;

/// `s` as one line of at most `META_MAX` bytes: control characters become
/// spaces, and a cut falls on a character boundary.
fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > META_MAX {
        let mut end = META_MAX;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out.trim().to_owned()
}

impl Checkout {
    /// `path:` evaluates exactly the files written by `fetch` (a git+file
    /// flake would see only tracked files, design §9).
    pub fn flake_attr(&self, attr: &str) -> String {
        format!("path:{}#{attr}", self.dir.display())
    }
}

/// What `build` produced: the output paths of `procurator.closure`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closure {
    pub paths: Vec<String>,
}

/// Step `fetch`: fetches `repo` into its mirror and writes `commit`'s tree
/// into `work_dir` (emptied first).
pub async fn fetch(
    repo: &str,
    commit: &str,
    mirror: &Path,
    work_dir: &Path,
    limits: &TreeLimits,
    log: &mut JobLog,
) -> Result<Checkout, JobError> {
    let t = Instant::now();
    let _ = std::fs::remove_dir_all(work_dir);
    log.line(&format!("fetching {repo}"));
    let (repo_url, rev, mirror, dest, limits) = (
        repo.to_owned(),
        commit.to_owned(),
        mirror.to_owned(),
        work_dir.to_owned(),
        *limits,
    );
    let (author, summary) = tokio::task::spawn_blocking(move || -> Result<_, GitError> {
        let repo = git::fetch_mirror(&repo_url, &mirror)?;
        let id = git::checkout_commit(&repo, &rev, &dest, &limits)?;
        // Who wrote it and why, for the generation's history; a commit
        // whose author or message cannot be read publishes without them.
        let meta = repo
            .revparse_single(&id)
            .and_then(|o| o.peel_to_commit())
            .map(|c| {
                (
                    one_line(c.author().name().unwrap_or_default()),
                    one_line(c.summary().unwrap_or_default()),
                )
            })
            .unwrap_or_default();
        Ok(meta)
    })
    .await
    .map_err(|e| JobError::Join(e.to_string()))??;
    log.line(&format!("checked out {commit} ({} ms)", ms(t.elapsed())));
    Ok(Checkout {
        dir: work_dir.to_owned(),
        author,
        summary,
    })
}

/// Step `evaluate`: evaluates `procurator.vmSpecs` and validates every
/// spec. nix's stderr goes to the log when evaluation fails.
pub async fn evaluate(
    nix: &Nix,
    checkout: &Checkout,
    log: &mut JobLog,
) -> Result<Vec<VmSpec>, JobError> {
    let t = Instant::now();
    // nix's own words for this are "path '…/flake.nix' does not exist".
    if !checkout.dir.join("flake.nix").is_file() {
        log.line(NO_FLAKE);
        return Err(JobError::NoFlake);
    }
    check_inputs(nix, checkout, log).await?;
    log.line(&format!("evaluating {SPECS_ATTR}"));
    let value = nix
        .eval_json(&checkout.flake_attr(SPECS_ATTR))
        .await
        .map_err(|e| eval_failed(SPECS_ATTR, &e, log))?;
    let specs = parse_specs(value)?;
    log.line(&format!(
        "evaluated {} VM(s): {} ({} ms)",
        specs.len(),
        specs
            .iter()
            .map(|s| s.name().as_str())
            .collect::<Vec<_>>()
            .join(", "),
        ms(t.elapsed())
    ));
    Ok(specs)
}

/// Copies nix's stderr into the log and makes the job's error of it.
fn eval_failed(attr: &'static str, e: &NixError, log: &mut JobLog) -> JobError {
    if let Some(s) = e.stderr() {
        for l in s.lines() {
            log.line(l);
        }
    }
    JobError::Eval {
        attr,
        summary: summary(e),
    }
}

/// The flake's inputs, read from flake.lock and flake.nix without
/// fetching any, must all be of an allowed kind (`repo_outils::flake`)
/// before nix evaluates the flake and would fetch them.
async fn check_inputs(nix: &Nix, checkout: &Checkout, log: &mut JobLog) -> Result<(), JobError> {
    const INPUTS: &str = "the inputs of flake.nix";
    let declared = nix
        .declared_flake_inputs(&checkout.dir)
        .await
        .map_err(|e| eval_failed(INPUTS, &e, log))?;
    let n = repo_outils::flake::check_inputs(&checkout.dir, &declared)?;
    log.line(&format!("checked {n} flake input(s) and lock node(s)"));
    Ok(())
}

/// Every store path the specs boot, sorted and without repeats.
fn store_roots(specs: &[VmSpec]) -> Vec<String> {
    let mut r: Vec<String> = specs
        .iter()
        .flat_map(|s| s.store_roots())
        .map(str::to_owned)
        .collect();
    r.sort();
    r.dedup();
    r
}

/// Step `build`: builds `procurator.closure` (nix's build log goes to the
/// job log) and checks that it holds every path the specs boot.
pub async fn build(
    nix: &Nix,
    checkout: &Checkout,
    specs: &[VmSpec],
    log: &mut JobLog,
) -> Result<Closure, JobError> {
    let t = Instant::now();
    log.line(&format!("building {CLOSURE_ATTR}"));
    let build_failed = |e: NixError| JobError::Build {
        attr: CLOSURE_ATTR,
        summary: summary(&e),
    };
    let built = {
        let mut sink = |l: &str| log.line(l);
        nix.build(&checkout.flake_attr(CLOSURE_ATTR), Some(&mut sink))
            .await
    };
    let paths = built.map_err(build_failed)?;
    let missing = nix
        .missing_paths(&store_roots(specs))
        .await
        .map_err(build_failed)?;
    if !missing.is_empty() {
        return Err(JobError::Specs {
            attr: SPECS_ATTR,
            reason: format!(
                "paths the specs boot were not built by {CLOSURE_ATTR}: {}",
                missing.join(", ")
            ),
        });
    }
    log.line(&format!(
        "built {} ({} ms)",
        paths.join(" "),
        ms(t.elapsed())
    ));
    Ok(Closure { paths })
}

/// Step `upload`: copies the closure and its build logs to the cache and
/// pins it as `<project>/generation-<number>` (the cache keeps the last
/// `--keep-generations` of each project); without a cache the closure
/// stays local.
pub async fn upload(
    nix: &Nix,
    cache: Option<&CacheTarget>,
    closure: &Closure,
    project: &str,
    number: i64,
    log: &mut JobLog,
) -> Result<(), JobError> {
    let t = Instant::now();
    let Some(cache) = cache else {
        log.line("no --cache configured: closures stay in the local store");
        return Ok(());
    };
    log.line(&format!("copying the closure to {} (zstd)", cache.url));
    // A copy that fails while the cache answers is tried once more at once:
    // nix 2.8 aborts a copy ("coroutine has finished") when another client
    // uploads one of the same paths meanwhile (two projects building one
    // derivation), and the second copy skips what is now there.
    let mut attempt = 1;
    loop {
        let copied = {
            let mut sink = |l: &str| log.line(l);
            nix.copy_to(
                &cache.url,
                &closure.paths,
                "zstd",
                cache.netrc.as_deref(),
                Some(&mut sink),
            )
            .await
        };
        let Err(e) = copied else { break };
        let summary = summary(&e);
        match probe_cache(&cache.url).await {
            Some(why) => return Err(JobError::CacheUnavailable { why, summary }),
            None if attempt < COPY_ATTEMPTS => {
                log.line(&format!(
                    "copy failed while the cache answers ({summary}); copying again"
                ));
                attempt += 1;
            }
            None => return Err(JobError::Upload { summary }),
        }
    }
    match crate::build_logs::upload(nix, &cache.url, cache.netrc.as_deref(), &closure.paths).await {
        Ok(r) => {
            log.line(&format!("uploaded {} build logs", r.uploaded.len()));
            for (drv, why) in &r.skipped {
                log.line(&format!("no build log uploaded for {drv}: {why}"));
            }
        }
        Err(e) => log.line(&format!("build logs not uploaded: {}", summary(&e))),
    }
    let pin = format!("{project}/generation-{number}");
    crate::pin::pin(&cache.url, cache.token.as_deref(), &pin, &closure.paths)
        .await
        .map_err(JobError::Pin)?;
    log.line(&format!("pinned as {pin} ({} ms)", ms(t.elapsed())));
    Ok(())
}

/// Copies tried while the cache answers (see `upload`).
const COPY_ATTEMPTS: u32 = 2;

/// How long the cache may take to answer the probe after a failed copy.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the cache for `/nix-cache-info` after nix failed to copy to it:
/// why the cache is unavailable (unreachable, no answer, 5xx), or none
/// when it answers, so the failure was the upload's own (a 4xx, a refused
/// path, a full disk reported as such). nix's own message is text; this
/// answer is typed.
async fn probe_cache(url: &str) -> Option<String> {
    let req = http::Request::get(format!("{url}/nix-cache-info"))
        .body(bytes::Bytes::new())
        .ok()?;
    match commands::http::HttpClient::tcp()
        .with_timeout(PROBE_TIMEOUT)
        .send(req)
        .await
    {
        Ok(r) if r.status.is_server_error() => Some(format!("the cache answers {}", r.status)),
        Ok(_) => None,
        Err(e) if http_is_transient(&e) => Some(commands::report::error_chain(&e)),
        Err(_) => None,
    }
}

/// Step `publish`: hands the generation to the control plane and records
/// it, whether or not the control plane is reachable right now (it gets it
/// on reconnect), but not when it refuses it.
pub async fn publish(
    publisher: &Publisher,
    db: &Db,
    generation: &Generation,
    meta: &commands::model::PublishMeta,
    log: &mut JobLog,
) -> Result<(), JobError> {
    let number = generation.number;
    log.line(&format!(
        "publishing generation {number} (intentHash {})",
        generation.intent_hash
    ));
    match publisher
        .publish_with_meta(generation.clone(), meta.clone())
        .await
    {
        Ok(p) => {
            log.line(&format!(
                "control plane accepted generation {number}: {} placed{}{}",
                p.placed,
                if p.noop { ", no-op" } else { "" },
                p.unplaced
                    .iter()
                    .map(|(n, r)| format!("; {n} unplaced: {r}"))
                    .collect::<String>()
            ));
        }
        Err(PublishError::Unavailable(why)) => {
            log.line(&format!("control plane unreachable ({why}); generation {number} is published when it connects"));
        }
        Err(e) => return Err(e.into()),
    }
    db.record_generation(generation)?;
    Ok(())
}

/// Parses the evaluated list, naming the VM whose spec is wrong.
fn parse_specs(value: serde_json::Value) -> Result<Vec<VmSpec>, JobError> {
    let bad = |reason: String| JobError::Specs {
        attr: SPECS_ATTR,
        reason,
    };
    let serde_json::Value::Array(items) = value else {
        return Err(bad("expected a list".into()));
    };
    let mut specs = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let name = item
            .get("name")
            .and_then(|n| n.as_str())
            .map_or_else(|| format!("#{i}"), str::to_owned);
        let spec: VmSpec =
            serde_json::from_value(item).map_err(|e| bad(format!("VM {name}: {e}")))?;
        specs.push(spec);
    }
    let mut names: Vec<&str> = specs.iter().map(|s| s.name().as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(format!("VM name {} appears twice", w[0])));
    }
    Ok(specs)
}

/// "web" of "builder for '/nix/store/<hash>-web.drv' failed …".
fn failed_drv_name(head: &str) -> Option<&str> {
    let path = head.split('\'').nth(1)?;
    let base = path.strip_prefix("/nix/store/")?.strip_suffix(".drv")?;
    base.split_once('-').map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, hash: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name,
            "toplevel": "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys",
            "kernelPath": "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/kernel",
            "cpu": 1, "memoryMb": 64, "contentHash": hash,
        })
    }

    #[test]
    fn intent_hash_ignores_order_and_tracks_content() {
        let a = parse_specs(serde_json::json!([spec("a", "h1"), spec("b", "h2")])).unwrap();
        let b = parse_specs(serde_json::json!([spec("b", "h2"), spec("a", "h1")])).unwrap();
        let c = parse_specs(serde_json::json!([spec("a", "h1"), spec("b", "h3")])).unwrap();
        assert_eq!(intent_hash(&a).hash, intent_hash(&b).hash);
        assert_ne!(intent_hash(&a).hash, intent_hash(&c).hash);
        assert_eq!(intent_hash(&a).hash.as_str().len(), 64);
    }

    #[test]
    fn bad_specs_name_the_vm() {
        let mut bad = spec("web-1", "h");
        bad["cpu"] = 0.into();
        let err = parse_specs(serde_json::json!([spec("web-0", "h"), bad]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("VM web-1") && err.contains("cpu"), "{err}");
        let err = parse_specs(serde_json::json!([spec("a", "h"), spec("a", "h")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("appears twice"), "{err}");
        assert!(parse_specs(serde_json::json!({})).is_err());
    }

    #[test]
    fn a_build_failure_is_summed_up_by_its_failing_builder() {
        // nix 2.8's stderr for a closure whose dependency failed.
        let stderr = "building '/nix/store/0dxr-failing-step.drv'...\n\
error: builder for '/nix/store/0dxr-failing-step.drv' failed with exit code 1;\n       \
last 4 log lines:\n       > compiling\n       > a\n       > b\n       \
> main.c:3: undefined reference to foo\n       \
For full logs, run 'nix log /nix/store/0dxr-failing-step.drv'.\n\
error: 1 dependencies of derivation '/nix/store/8sd1-outer.drv' failed to build\n";
        assert_eq!(
            builder_failure(stderr).unwrap(),
            "builder for '/nix/store/0dxr-failing-step.drv' failed with exit code 1; \
             last log lines: a | b | main.c:3: undefined reference to foo"
        );
        assert_eq!(builder_failure("error: attribute 'x' missing\n"), None);
        // How CI's nix (-L, internal-json) reports it: the builder's lines
        // came first, prefixed with its name; other builders' lines are
        // not its own.
        let rendered = "building '/nix/store/0dxr-web.drv'\n\
web> compiling\nweb-db> fine\nweb> main.c:3: undefined reference to foo\n\
error: builder for '/nix/store/0dxr-web.drv' failed with exit code 1\n\
error: 1 dependencies of derivation '/nix/store/8sd1-outer.drv' failed to build\n";
        assert_eq!(
            builder_failure(rendered).unwrap(),
            "builder for '/nix/store/0dxr-web.drv' failed with exit code 1; \
             last log lines: compiling | main.c:3: undefined reference to foo"
        );
        assert_eq!(
            builder_failure("error: builder for '/nix/store/q.drv' failed with exit code 2\n")
                .unwrap(),
            "builder for '/nix/store/q.drv' failed with exit code 2"
        );
    }

    /// A job log in a temp dir and a way to read it back.
    fn temp_log(dir: &Path) -> (JobLog, PathBuf) {
        let path = dir.join("job.log");
        (JobLog::open(&path, 1 << 20).unwrap(), path)
    }

    /// A repository with one commit holding `flake.nix`.
    fn repo_with_commit(dir: &Path) -> String {
        let repo = git2::Repository::init(dir).unwrap();
        std::fs::write(dir.join("flake.nix"), "{ }").unwrap();
        let mut idx = repo.index().unwrap();
        idx.add_path(Path::new("flake.nix")).unwrap();
        let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("T", "t@example.com").unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "one", &tree, &[])
            .unwrap()
            .to_string()
    }

    /// An author or message line is one line within the control plane's
    /// bound, cut on a character boundary, whatever the commit holds.
    #[test]
    fn commit_meta_is_one_bounded_line() {
        assert_eq!(one_line("fix\tthe\u{7}bell  "), "fix the bell");
        let long = "é".repeat(150);
        let cut = one_line(&long);
        assert!(
            cut.len() <= META_MAX && cut.chars().all(|c| c == 'é'),
            "{cut}"
        );
    }

    #[test]
    fn mirrors_are_named_by_repository() {
        let a = mirror_dir(Path::new("/d"), "/srv/a.git");
        assert_eq!(a, mirror_dir(Path::new("/d"), "/srv/a.git"));
        assert_ne!(a, mirror_dir(Path::new("/d"), "/srv/b.git"));
        assert!(a.starts_with("/d/mirrors"));
        assert_eq!(a.file_name().unwrap().len(), "0123456789abcdef.git".len());
        let c = Checkout {
            dir: PathBuf::from("/w/job-1"),
            ..Checkout::default()
        };
        assert_eq!(c.flake_attr(SPECS_ATTR), "path:/w/job-1#procurator.vmSpecs");
    }

    #[tokio::test]
    async fn fetch_writes_the_commit_tree_and_logs_it() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let commit = repo_with_commit(&src);
        let work = tmp.path().join("work/job-1");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(work.join("stale"), "from an earlier attempt").unwrap();
        let (mut log, log_file) = temp_log(tmp.path());
        let checkout = fetch(
            src.to_str().unwrap(),
            &commit,
            &tmp.path().join("mirrors/m.git"),
            &work,
            &TreeLimits::default(),
            &mut log,
        )
        .await
        .unwrap();
        assert_eq!(checkout.dir, work);
        // Who and why, one line each, for the generation's history.
        assert_eq!(
            (checkout.author.as_str(), checkout.summary.as_str()),
            ("T", "one")
        );
        assert_eq!(
            std::fs::read_to_string(work.join("flake.nix")).unwrap(),
            "{ }"
        );
        assert!(!work.join("stale").exists(), "the work dir starts empty");
        let text = std::fs::read_to_string(&log_file).unwrap();
        assert!(
            text.starts_with(&format!(
                "fetching {}\nchecked out {commit} (",
                src.display()
            )),
            "{text}"
        );

        let err = fetch(
            src.to_str().unwrap(),
            &"b".repeat(40),
            &tmp.path().join("mirrors/m.git"),
            &work,
            &TreeLimits::default(),
            &mut log,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, JobError::Git(_)), "{err}");
    }

    #[tokio::test]
    async fn upload_without_a_cache_keeps_the_closure_local() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, log_file) = temp_log(tmp.path());
        let closure = Closure {
            paths: vec!["/nix/store/x".into()],
        };
        upload(&Nix::new(), None, &closure, "default", 1, &mut log)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&log_file).unwrap(),
            "no --cache configured: closures stay in the local store\n"
        );
    }

    #[tokio::test]
    async fn publish_records_the_generation_while_the_control_plane_is_away() {
        let tmp = tempfile::tempdir().unwrap();
        let (db, _) = Db::open(&tmp.path().join("ci.sqlite")).unwrap();
        let (job, _) = db
            .enqueue("/r", "refs/heads/main", "0", "c1", None, None)
            .unwrap();
        let specs = parse_specs(serde_json::json!([spec("a", "h1")])).unwrap();
        let intent = intent_hash(&specs);
        let generation = Generation {
            project: "default".into(),
            number: 1,
            job_id: job,
            commit: "c1".into(),
            intent_hash: intent.hash.clone(),
            closure: "/nix/store/x".into(),
            created_at_ms: 0,
            specs_json: intent.canonical_json,
        };
        let (mut log, log_file) = temp_log(tmp.path());
        let meta = commands::model::PublishMeta::default();
        publish(&Publisher::disabled(), &db, &generation, &meta, &mut log)
            .await
            .unwrap();
        let text = std::fs::read_to_string(&log_file).unwrap();
        assert_eq!(
            text,
            format!(
                "publishing generation 1 (intentHash {})\ncontrol plane unreachable (no --control-plane configured); generation 1 is published when it connects\n",
                intent.hash
            )
        );
        let recorded = db.latest_generations().unwrap().remove(0);
        assert_eq!((recorded.number, recorded.intent_hash), (1, intent.hash));
        assert_eq!(
            db.job(job).unwrap().unwrap().state,
            crate::db::JobState::Succeeded
        );
    }

    /// The log stops growing at its limit with one line saying so; the
    /// job's final lines still land after it.
    #[test]
    fn the_job_log_is_bounded_and_says_where_it_was_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("job.log");
        let mut log = JobLog::open(&path, 1000).unwrap();
        for i in 0..10_000 {
            log.line(&format!("line {i:05} of a build that never stops talking"));
        }
        assert!(log.is_truncated());
        log.final_line("failed: the build printed too much");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() < 1000 + 300, "{} bytes", text.len());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("line 00000"), "{text}");
        assert!(
            lines[lines.len() - 2].starts_with(
                "log truncated: this job's output passed the job log limit of 1000 bytes"
            ),
            "{text}"
        );
        assert_eq!(lines[lines.len() - 1], "failed: the build printed too much");
        // Reopened (a re-queued job), what is there counts.
        let mut again = JobLog::open(&path, 1000).unwrap();
        again.line("more");
        assert!(again.is_truncated());
    }

    #[tokio::test]
    async fn timed_records_only_finished_steps() {
        let mut t = Timings::default();
        timed(&mut t.fetch_ms, async { Ok(()) }).await.unwrap();
        let failed: Result<(), JobError> =
            timed(&mut t.eval_ms, async { Err(JobError::Join("x".into())) }).await;
        assert!(failed.is_err());
        assert!(t.fetch_ms.is_some());
        assert_eq!(t.eval_ms, None);
    }

    #[test]
    fn only_an_unavailable_cache_or_control_plane_is_transient() {
        let transient = [
            JobError::CacheUnavailable {
                why: "cannot connect".into(),
                summary: "x".into(),
            },
            JobError::Pin(PinError::Refused {
                url: "u".into(),
                status: http::StatusCode::SERVICE_UNAVAILABLE,
                body: String::new(),
            }),
            JobError::Pin(PinError::Http(commands::http::HttpError::Timeout {
                target: "c".into(),
                ms: 1,
            })),
            JobError::Publish(PublishError::Unavailable("gone".into())),
        ];
        for e in &transient {
            assert!(e.is_transient(), "{e}");
        }
        let deterministic = [
            JobError::Upload {
                summary: "403".into(),
            },
            JobError::Pin(PinError::Refused {
                url: "u".into(),
                status: http::StatusCode::FORBIDDEN,
                body: String::new(),
            }),
            JobError::Build {
                attr: CLOSURE_ATTR,
                summary: "x".into(),
            },
            JobError::Eval {
                attr: SPECS_ATTR,
                summary: "x".into(),
            },
            JobError::Publish(PublishError::Refused("quota".into())),
            JobError::Cancelled { step: "build" },
        ];
        for e in &deterministic {
            assert!(!e.is_transient(), "{e}");
        }
    }

    #[test]
    fn retries_back_off_and_stop() {
        let p = RetryPolicy {
            retries: 3,
            backoff: Duration::from_millis(100),
        };
        assert_eq!(p.delay(1), Duration::from_millis(100));
        assert_eq!(p.delay(3), Duration::from_millis(400));
        assert_eq!(p.delay(40), MAX_BACKOFF);
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, path) = temp_log(tmp.path());
        let away = JobError::CacheUnavailable {
            why: "cannot connect to c".into(),
            summary: "copy failed".into(),
        };
        assert_eq!(
            retry_after(p, "upload", 1, &away, &mut log),
            Some(Duration::from_millis(100))
        );
        assert_eq!(retry_after(p, "upload", 4, &away, &mut log), None);
        let refused = JobError::Upload {
            summary: "403".into(),
        };
        assert_eq!(retry_after(p, "upload", 1, &refused, &mut log), None);
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            "upload attempt 1 of 4 failed, transient: uploading the closure to the cache failed \
             (cannot connect to c): copy failed; retrying in 100 ms\n"
        );
    }

    #[test]
    fn a_cancel_before_the_runner_starts_the_job_still_lands() {
        let c = Cancels::default();
        c.cancel(7);
        assert!(c.start(7).is_cancelled(), "asked while claimed");
        c.end();
        assert!(!c.start(8).is_cancelled());
        c.cancel(8);
        let t = c.start(9);
        assert!(!t.is_cancelled(), "another job's cancel is not this one's");
    }
}
