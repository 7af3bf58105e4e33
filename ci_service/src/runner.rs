//! The job runner: one job at a time (nix builds share one store and two
//! cores), each a fixed pipeline: fetch and check out the commit, evaluate
//! `procurator.vmSpecs`, build `procurator.closure`, copy the closure to the
//! cache (zstd), pin it, then publish the generation. Any failure stops the
//! pipeline before publish, so a bad push changes nothing (all or nothing).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use commands::types::VmSpec;
use repo_outils::git::{self, GitError};
use repo_outils::nix::{Nix, NixError};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, DbError, Generation, Job};
use crate::publisher::{PublishError, Publisher};

/// The flake contract (context/architecture.md): one attribute with every
/// VM's spec, one build whose closure holds every path they boot.
pub const SPECS_ATTR: &str = "procurator.vmSpecs";
pub const CLOSURE_ATTR: &str = "procurator.closure";

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("git: {0}")]
    Git(#[from] GitError),
    #[error("evaluating {attr} failed: {summary}")]
    Eval {
        attr: &'static str,
        summary: String,
        source: NixError,
    },
    #[error("{attr} is not a valid VmSpec list: {reason}")]
    Specs { attr: &'static str, reason: String },
    #[error("building {attr} failed: {summary}")]
    Build {
        attr: &'static str,
        summary: String,
        source: NixError,
    },
    #[error("uploading the closure to the cache failed: {summary}")]
    Upload { summary: String, source: NixError },
    #[error("pinning the closure in the cache failed: {0}")]
    Pin(String),
    #[error("{0}")]
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

/// Where closures go: the cache's base URL and its upload token.
#[derive(Clone, Debug)]
pub struct CacheTarget {
    pub url: String,
    pub token: Option<String>,
    /// netrc file handing the token to nix (written at start).
    pub netrc: Option<PathBuf>,
}

pub struct Runner {
    pub db: Arc<Db>,
    pub nix: Nix,
    pub data_dir: PathBuf,
    pub cache: Option<CacheTarget>,
    pub publisher: Publisher,
    pub deploy_ref: String,
    pub wake: Arc<Notify>,
}

/// Where the log of job `id` is written.
pub fn log_path(data_dir: &Path, id: i64) -> PathBuf {
    data_dir.join("logs").join(format!("{id}.log"))
}

pub use commands::types::intent_hash;

/// The last line of nix's stderr that starts with `error:`, or the last
/// line: the one-line reason shown in the job list.
fn summary(e: &NixError) -> String {
    let text = e.stderr().unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| l.trim_start().starts_with("error:"))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .map_or_else(|| e.to_string(), |l| l.trim().to_owned())
}

/// Appends lines to a job's log file; each write is flushed so followers
/// see it at once.
pub struct JobLog {
    file: std::fs::File,
}

impl JobLog {
    fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(JobLog { file })
    }

    pub fn line(&mut self, s: &str) {
        // A log write failure must not fail the build; tracing keeps it.
        if let Err(e) = writeln!(self.file, "{s}") {
            tracing::warn!(error = %e, "cannot write job log");
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
                Ok(Some(job)) => job,
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
            let id = job.id;
            let span = tracing::info_span!("job", job_id = id, commit = %job.commit);
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

    async fn run_job(self: Arc<Self>, job: Job) {
        let path = log_path(&self.data_dir, job.id);
        let mut log = match JobLog::open(&path) {
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
        let mut timings = serde_json::json!({ "queue_ms": queue_ms });
        log.line(&format!(
            "job {} for {} {} at {}",
            job.id, job.repo, job.git_ref, job.commit
        ));
        let result = self.pipeline(&job, &mut log, &mut timings).await;
        let _ = self.db.set_timings(job.id, &timings);
        match result {
            Ok(Some(n)) => {
                log.line(&format!("succeeded: generation {n}"));
                tracing::info!(generation = n, "job succeeded");
            }
            Ok(None) => {
                log.line(&format!(
                    "succeeded: {} is not the deployed ref ({}), nothing published",
                    job.git_ref, self.deploy_ref
                ));
            }
            Err(e) => {
                let msg = e.to_string();
                log.line(&format!("failed: {msg}"));
                log.line("nothing was published; the active generation is unchanged");
                tracing::warn!(error = %msg, "job failed");
                if let Err(e) = self.db.fail(job.id, &msg) {
                    tracing::error!(error = %e, "cannot record the failure");
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.work_dir(job.id));
    }

    fn work_dir(&self, id: i64) -> PathBuf {
        self.data_dir.join("work").join(format!("job-{id}"))
    }

    async fn pipeline(
        &self,
        job: &Job,
        log: &mut JobLog,
        timings: &mut serde_json::Value,
    ) -> Result<Option<i64>, JobError> {
        // 1. Fetch into a per-repository mirror and write the commit's tree.
        let t = Instant::now();
        let mirror = self.data_dir.join("mirrors").join(format!(
            "{}.git",
            &format!("{:x}", Sha256::digest(job.repo.as_bytes()))[..16]
        ));
        let wd = self.work_dir(job.id);
        let _ = std::fs::remove_dir_all(&wd);
        let (repo_url, commit, wd2) = (job.repo.clone(), job.commit.clone(), wd.clone());
        log.line(&format!("fetching {repo_url}"));
        tokio::task::spawn_blocking(move || -> Result<String, GitError> {
            let repo = git::fetch_mirror(&repo_url, &mirror)?;
            git::checkout_commit(&repo, &commit, &wd2)
        })
        .await
        .map_err(|e| JobError::Join(e.to_string()))??;
        timings["fetch_ms"] = ms(t.elapsed()).into();
        log.line(&format!(
            "checked out {} ({} ms)",
            job.commit,
            ms(t.elapsed())
        ));

        // `path:` evaluates exactly the files written above (a git+file
        // flake would see only tracked files, design §9).
        let flake = format!("path:{}", wd.display());

        // 2. Evaluate.
        let t = Instant::now();
        log.line(&format!("evaluating {SPECS_ATTR}"));
        let value = match self.nix.eval_json(&format!("{flake}#{SPECS_ATTR}")).await {
            Ok(v) => v,
            Err(e) => {
                if let Some(s) = e.stderr() {
                    for l in s.lines() {
                        log.line(l);
                    }
                }
                return Err(JobError::Eval {
                    attr: SPECS_ATTR,
                    summary: summary(&e),
                    source: e,
                });
            }
        };
        let specs = parse_specs(value)?;
        timings["eval_ms"] = ms(t.elapsed()).into();
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

        // 3. Build.
        let t = Instant::now();
        log.line(&format!("building {CLOSURE_ATTR}"));
        let built = {
            let mut sink = |l: &str| log.line(l);
            self.nix
                .build(&format!("{flake}#{CLOSURE_ATTR}"), Some(&mut sink))
                .await
        };
        let closure = match built {
            Ok(paths) => paths,
            Err(e) => {
                return Err(JobError::Build {
                    attr: CLOSURE_ATTR,
                    summary: summary(&e),
                    source: e,
                });
            }
        };
        let roots: Vec<String> = {
            let mut r: Vec<String> = specs
                .iter()
                .flat_map(|s| s.store_roots())
                .map(str::to_owned)
                .collect();
            r.sort();
            r.dedup();
            r
        };
        let missing = self
            .nix
            .missing_paths(&roots)
            .await
            .map_err(|e| JobError::Build {
                attr: CLOSURE_ATTR,
                summary: summary(&e),
                source: e,
            })?;
        if !missing.is_empty() {
            return Err(JobError::Specs {
                attr: SPECS_ATTR,
                reason: format!(
                    "paths the specs boot were not built by {CLOSURE_ATTR}: {}",
                    missing.join(", ")
                ),
            });
        }
        timings["build_ms"] = ms(t.elapsed()).into();
        log.line(&format!(
            "built {} ({} ms)",
            closure.join(" "),
            ms(t.elapsed())
        ));

        let commands::types::Intent {
            hash: intent,
            canonical_json: specs_json,
        } = intent_hash(&specs);
        if job.git_ref != self.deploy_ref {
            return self
                .db
                .succeed_without_generation(job.id, &specs_json)
                .map(|()| None)
                .map_err(Into::into);
        }

        // 4. Upload and pin. The generation number is chosen first so the
        // pin can carry it.
        let number = self.db.next_generation(self.publisher.remote_active())?;
        let t = Instant::now();
        if let Some(cache) = &self.cache {
            log.line(&format!("copying the closure to {} (zstd)", cache.url));
            let copied = {
                let mut sink = |l: &str| log.line(l);
                self.nix
                    .copy_to(
                        &cache.url,
                        &closure,
                        "zstd",
                        cache.netrc.as_deref(),
                        Some(&mut sink),
                    )
                    .await
            };
            copied.map_err(|e| JobError::Upload {
                summary: summary(&e),
                source: e,
            })?;
            pin(cache, &format!("generation-{number}"), &closure).await?;
            log.line(&format!(
                "pinned as generation-{number} ({} ms)",
                ms(t.elapsed())
            ));
        } else {
            log.line("no --cache configured: closures stay in the local store");
        }
        timings["upload_ms"] = ms(t.elapsed()).into();

        // 5. Publish; record the generation whether or not the control
        // plane is reachable right now (it gets it on reconnect), but not
        // when it refuses it.
        let t = Instant::now();
        let generation = Generation {
            number,
            job_id: job.id,
            commit: job.commit.clone(),
            intent_hash: intent.clone(),
            closure: closure.join(" "),
            created_at_ms: commands::telemetry::now_ms() as i64,
            specs_json,
        };
        log.line(&format!(
            "publishing generation {number} (intentHash {intent})"
        ));
        match self.publisher.publish(generation.clone()).await {
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
        self.db.record_generation(&generation)?;
        timings["publish_ms"] = ms(t.elapsed()).into();
        Ok(Some(number))
    }
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

/// `PUT /_pcr/pins/<name>` so the cache keeps this closure while the
/// generation may run.
async fn pin(cache: &CacheTarget, name: &str, paths: &[String]) -> Result<(), JobError> {
    let url = format!("{}/_pcr/pins/{name}", cache.url.trim_end_matches('/'));
    let mut headers = Vec::new();
    if let Some(t) = &cache.token {
        headers.push((
            http::header::AUTHORIZATION,
            crate::http_client::basic_auth("pcr", t),
        ));
    }
    let body = serde_json::to_vec(&serde_json::json!({ "paths": paths })).expect("json");
    let (status, body) = crate::http_client::send(
        http::Method::PUT,
        &url,
        &headers,
        Some(("application/json".into(), body)),
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| JobError::Pin(e.to_string()))?;
    if !status.is_success() {
        return Err(JobError::Pin(format!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    Ok(())
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
}
