//! repohub's side of ci_service's API. The client and the types are
//! `commands::ci_api`'s (one definition of the push event, the job and its
//! state for ci_service and its callers); this module only fixes the short
//! timeout every CI panel uses: a slow or dead ci_service must make its
//! panel say "unavailable", never hang a page.

use std::time::Duration;

pub use commands::ci_api::{CiClient, CiError, Job, JobState};

/// The bound on every call to ci_service (connect, answer and body; a
/// followed log is bounded only until its head).
pub const API_TIMEOUT: Duration = Duration::from_secs(3);

/// The client for `--ci-url` (unconfigured when it is `None`).
pub fn client(base: Option<String>, secret: Option<String>) -> Result<CiClient, CiError> {
    CiClient::new(base, secret, API_TIMEOUT)
}

/// How long one repository's job list is reused by the badge views
/// (commits, branches, repository page): one call to ci_service per page
/// and per a few seconds, never one per commit.
pub const JOBS_TTL: Duration = Duration::from_secs(2);

/// How many of a repository's newest jobs the badges are drawn from.
pub const BADGE_JOBS: usize = 200;

/// A short-lived cache of each repository's newest jobs (keyed by the
/// repository's path, as ci_service knows it), shared by every page that
/// shows CI badges. Bounded: entries older than [`JOBS_TTL`] are dropped
/// whenever a new one is stored.
#[derive(Debug, Clone, Default)]
pub struct JobsCache {
    inner: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Cached>>>,
}

#[derive(Debug)]
struct Cached {
    at: std::time::Instant,
    jobs: std::sync::Arc<Vec<Job>>,
}

impl JobsCache {
    /// The newest jobs of the repository at `repo` (fresh from `ci` when
    /// the cached list is older than [`JOBS_TTL`]).
    pub async fn jobs(
        &self,
        ci: &CiClient,
        repo: &str,
    ) -> Result<std::sync::Arc<Vec<Job>>, CiError> {
        if let Some(c) = self.lock().get(repo)
            && c.at.elapsed() < JOBS_TTL
        {
            return Ok(c.jobs.clone());
        }
        let jobs = std::sync::Arc::new(ci.jobs(repo, BADGE_JOBS).await?);
        let mut map = self.lock();
        map.retain(|_, c| c.at.elapsed() < JOBS_TTL);
        map.insert(
            repo.to_owned(),
            Cached {
                at: std::time::Instant::now(),
                jobs: jobs.clone(),
            },
        );
        Ok(jobs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Cached>> {
        // A panic mid-insert leaves a map that is still a valid cache.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The badge of one commit: the newest job that built it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Badge {
    pub job_id: i64,
    pub state: JobState,
}

/// Each commit's newest job among `jobs` (newest first, as ci_service
/// lists them).
pub fn badges(jobs: &[Job]) -> std::collections::HashMap<String, Badge> {
    let mut out = std::collections::HashMap::new();
    for j in jobs {
        out.entry(j.commit.clone()).or_insert(Badge {
            job_id: j.id,
            state: j.state,
        });
    }
    out
}
