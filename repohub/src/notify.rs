//! Delivery of push events to ci_service: the post-receive hook drops one
//! spool file per push; this task moves each file into the `push_events`
//! table (the outbox) and POSTs due events to ci_service, retrying with
//! exponential backoff while it is down. The push itself never waits on any
//! of this.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ci::CiClient;
use crate::db::{Db, DbError};
use commands::ci_api::PushEvent;
use commands::telemetry::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("reading the spool directory")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// Delay before attempt `attempts + 1`: initial × 2^attempts, capped.
    pub fn delay(&self, attempts: i64) -> Duration {
        let factor = 1u32 << attempts.clamp(0, 16) as u32;
        self.initial.saturating_mul(factor).min(self.max)
    }
}

fn is_hex_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// (old, new, ref) of one updated ref.
pub type RefUpdate = (String, String, String);

/// Parses one spool file: `repo <path>` then `<old> <new> <ref>` lines, as
/// git feeds post-receive. Malformed lines are skipped.
pub fn parse_spool(text: &str) -> Option<(String, Vec<RefUpdate>)> {
    let mut lines = text.lines();
    let repo = lines.next()?.strip_prefix("repo ")?.to_owned();
    let updates = lines
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (old, new, r) = (it.next()?, it.next()?, it.next()?);
            (is_hex_id(old) && is_hex_id(new) && r.starts_with("refs/"))
                .then(|| (old.to_owned(), new.to_owned(), r.to_owned()))
        })
        .collect();
    Some((repo, updates))
}

/// The event for one ref update of the repository at `repo_path`: with its
/// project when the path is one of repohub's repositories under
/// `repos_root`, and with that project's deploy ref only when this
/// repository is the project's deploy repository (ci_service publishes
/// nothing for any other).
pub fn push_event(
    db: &Db,
    repos_root: &Path,
    repo_path: &str,
    (old, new, git_ref): RefUpdate,
) -> Result<PushEvent, DbError> {
    let mut ev = PushEvent {
        repo: repo_path.to_owned(),
        git_ref,
        old,
        new,
        project: None,
        deploy_ref: None,
    };
    let Some((project, repo)) = project_and_repo(repos_root, repo_path) else {
        return Ok(ev);
    };
    let Some(p) = db.project(&project)? else {
        return Ok(ev);
    };
    // A project named before names had to be tenant names cannot be one:
    // its pushes are built as a bare repository's, never deployed.
    if project.parse::<commands::types::ProjectName>().is_err() {
        tracing::warn!(%project, "project name is not a valid tenant name; its pushes are not deployed");
        return Ok(ev);
    }
    if p.deploy_repo.as_deref() == Some(repo.as_str()) {
        ev.deploy_ref = p.deploy_ref;
    }
    ev.project = Some(project);
    Ok(ev)
}

/// `<repos_root>/<project>/<repo>.git` split into valid names, or `None`.
fn project_and_repo(repos_root: &Path, repo_path: &str) -> Option<(String, String)> {
    let rel = Path::new(repo_path).strip_prefix(repos_root).ok()?;
    let mut parts = rel.components().map(|c| c.as_os_str().to_str());
    let (Some(Some(project)), Some(Some(repo_git)), None) =
        (parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let repo = repo_git.strip_suffix(".git")?;
    (crate::names::validate_project_name(project).is_ok()
        && crate::names::validate_name(repo).is_ok())
    .then(|| (project.to_owned(), repo.to_owned()))
}

/// Moves finished spool files (`*.evt`) into the outbox. A file is removed
/// only after its rows are committed, so a crash can at worst deliver a
/// push twice (ci_service supersedes duplicates), never lose it.
pub fn drain_spool(spool: &Path, repos_root: &Path, db: &Db) -> Result<usize, NotifyError> {
    // Recreated if someone removed it, so later pushes are recorded again.
    std::fs::create_dir_all(spool)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(spool)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "evt"))
        .collect();
    files.sort();
    let mut n = 0;
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %e, "unreadable spool file");
                continue;
            }
        };
        if let Some((repo, updates)) = parse_spool(&text) {
            for update in updates {
                db.enqueue_push(&push_event(db, repos_root, &repo, update)?)?;
                n += 1;
            }
        }
        std::fs::remove_file(&f)?;
    }
    Ok(n)
}

/// Delivers every due event once; failures are rescheduled.
pub async fn deliver_due(db: &Db, ci: &CiClient, backoff: &Backoff) -> Result<usize, NotifyError> {
    if !ci.configured() {
        return Ok(0);
    }
    let mut delivered = 0;
    for ev in db.due_pushes(50)? {
        match ci.push(&ev.event).await.map(|reply| reply.job_id) {
            Ok(job) => {
                tracing::info!(event = ev.id, repo = %ev.event.repo, r#ref = %ev.event.git_ref, job_id = ?job, "push delivered to ci_service");
                db.push_delivered(ev.id, job)?;
                delivered += 1;
            }
            Err(e) => {
                let next = now_ms() as i64 + backoff.delay(ev.attempts).as_millis() as i64;
                tracing::warn!(event = ev.id, attempts = ev.attempts + 1, error = %e, "ci_service notification failed; will retry");
                db.push_failed(ev.id, &e.to_string(), next)?;
            }
        }
    }
    Ok(delivered)
}

/// The background loop: drain the spool and deliver, every `tick`.
pub async fn run(
    spool: PathBuf,
    repos_root: PathBuf,
    db: Db,
    ci: CiClient,
    backoff: Backoff,
    tick: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let d = db.clone();
        let sp = spool.clone();
        let root = repos_root.clone();
        match tokio::task::spawn_blocking(move || drain_spool(&sp, &root, &d)).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "draining the push spool failed"),
            Err(e) => tracing::warn!(error = %e, "spool task failed"),
            Ok(Ok(_)) => {}
        }
        if let Err(e) = deliver_due(&db, &ci, &backoff).await {
            tracing::warn!(error = %e, "delivering push events failed");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(tick) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(400));
        assert_eq!(b.delay(40), Duration::from_secs(1));
    }

    #[test]
    fn events_name_the_project_and_only_the_deploy_repository_gets_its_ref() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let u = db.create_user("ann", "h").unwrap();
        let shop = db.create_project("shop", "", true, u.id).unwrap();
        db.create_repo(shop, "infra").unwrap();
        db.create_repo(shop, "docs").unwrap();
        let legacy = db.create_project("Old.Proj", "", true, u.id).unwrap();
        db.create_repo(legacy, "infra").unwrap();
        let root = Path::new("/srv/repos");
        let upd = || ("0".repeat(40), "a".repeat(40), "refs/heads/main".to_owned());
        let ev = |path: &str| push_event(&db, root, path, upd()).unwrap();
        let infra = ev("/srv/repos/shop/infra.git");
        assert_eq!(infra.project.as_deref(), Some("shop"));
        assert_eq!(infra.deploy_ref.as_deref(), Some("refs/heads/main"));
        let docs = ev("/srv/repos/shop/docs.git");
        assert_eq!(
            (docs.project.as_deref(), docs.deploy_ref),
            (Some("shop"), None)
        );
        // Outside repohub's tree, unknown, malformed or not a tenant name: a
        // bare repository's event, never a deploy.
        for path in [
            "/elsewhere/shop/infra.git",
            "/srv/repos/nope/infra.git",
            "/srv/repos/shop/infra",
            "/srv/repos/shop/sub/infra.git",
            "/srv/repos/Old.Proj/infra.git",
        ] {
            let e = ev(path);
            assert_eq!((e.project, e.deploy_ref), (None, None), "{path}");
        }
    }

    #[test]
    fn spool_parsing_skips_garbage() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let t = format!("repo /r/x.git\n{a} {b} refs/heads/main\nnonsense\n{a} zz refs/heads/x\n");
        let (repo, ups) = parse_spool(&t).unwrap();
        assert_eq!(repo, "/r/x.git");
        assert_eq!(ups, vec![(a, b, "refs/heads/main".to_owned())]);
        assert!(parse_spool("no header").is_none());
    }
}
