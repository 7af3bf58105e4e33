//! The job queue and the generation history in SQLite: the only state
//! ci_service keeps. Jobs move queued → running → succeeded |
//! built-not-deployed | failed | superseded | cancelled; finished jobs
//! older than the retention period are pruned; generations are numbered
//! monotonically per project here, which makes ci_service (i.e. Git) the
//! source of the control plane's desired state.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use commands::telemetry::now_ms;
use commands::types::IntentHash;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the database {path}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database query failed")]
    Query(#[from] rusqlite::Error),
    #[error("stored JSON is malformed")]
    Json(#[from] serde_json::Error),
}

/// Jobs and their states are the API's types: the `state` column holds
/// `JobState::as_str`, the `timings` column the JSON of `Timings`.
pub use commands::ci_api::{Job, JobState, Timings};

/// One published (or publishable) generation of one project; `GET
/// /generations` shows it camelCase (`jobId`, `intentHash`,
/// `createdAtMs`) like every Procurator JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Generation {
    pub project: String,
    pub number: i64,
    pub job_id: i64,
    pub commit: String,
    pub intent_hash: IntentHash,
    pub closure: String,
    pub created_at_ms: i64,
    #[serde(skip)]
    pub specs_json: String,
}

#[derive(Debug)]
pub struct Db {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repo TEXT NOT NULL,
    git_ref TEXT NOT NULL,
    old TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    started_at_ms INTEGER,
    finished_at_ms INTEGER,
    generation INTEGER,
    error TEXT,
    vm_specs TEXT,
    timings TEXT NOT NULL DEFAULT '{}',
    project TEXT,
    deploy_ref TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE TABLE IF NOT EXISTS project_generations (
    project TEXT NOT NULL,
    number INTEGER NOT NULL,
    job_id INTEGER NOT NULL,
    commit_id TEXT NOT NULL,
    intent_hash TEXT NOT NULL,
    specs_json TEXT NOT NULL,
    closure TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (project, number)
);
";

/// A database from before projects: its jobs gain the two columns and its
/// generations become the `default` project's (each statement is a no-op
/// on a database that has them).
fn migrate(conn: &Connection) -> Result<(), DbError> {
    let has = |col: &str| -> Result<bool, DbError> {
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = ?1",
            [col],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    };
    for col in ["project", "deploy_ref"] {
        if !has(col)? {
            conn.execute(&format!("ALTER TABLE jobs ADD COLUMN {col} TEXT"), [])?;
        }
    }
    let old: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'generations'",
        [],
        |r| r.get(0),
    )?;
    if old > 0 {
        conn.execute_batch(
            "INSERT OR IGNORE INTO project_generations
               SELECT 'default', number, job_id, commit_id, intent_hash, specs_json, closure, created_at_ms FROM generations;
             DROP TABLE generations;",
        )?;
    }
    Ok(())
}

const JOB_COLUMNS: &str = "id, repo, git_ref, old, commit_id, state, created_at_ms, started_at_ms, finished_at_ms, generation, error, timings, project, deploy_ref";

/// A queued job with what its push event claimed about deploy rights
/// (`Job` shows the project; the claimed deploy ref is for the runner).
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job: Job,
    pub deploy_ref: Option<String>,
}

/// A column's text that does not parse is an error, never a default: a
/// state this build does not know must not show as something else.
fn parsed<T, E>(
    r: &rusqlite::Row<'_>,
    idx: usize,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> rusqlite::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let text: String = r.get(idx)?;
    parse(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        repo: r.get(1)?,
        git_ref: r.get(2)?,
        old: r.get(3)?,
        commit: r.get(4)?,
        state: parsed(r, 5, str::parse::<JobState>)?,
        created_at_ms: r.get(6)?,
        started_at_ms: r.get(7)?,
        finished_at_ms: r.get(8)?,
        generation: r.get(9)?,
        error: r.get(10)?,
        timings: parsed(r, 11, |t| serde_json::from_str::<Timings>(t))?,
        project: r.get(12)?,
        vm_specs: None,
    })
}

impl Db {
    /// Opens (creating) the database and re-queues jobs a crash left
    /// running, so they are built again from the start.
    pub fn open(path: &Path) -> Result<(Db, usize), DbError> {
        let conn = Connection::open(path).map_err(|source| DbError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        let requeued = conn.execute(
            "UPDATE jobs SET state = 'queued', started_at_ms = NULL WHERE state = 'running'",
            [],
        )?;
        Ok((
            Db {
                conn: Mutex::new(conn),
            },
            requeued,
        ))
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every
        // change is one statement or a transaction), so poison is ignored.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a push; older queued jobs of the same repo and ref are
    /// superseded (only the newest commit of a ref is worth building).
    /// Returns the new id and how many jobs were superseded.
    /// `project` and `deploy_ref` are what the push event claimed (the
    /// runner decides what they are worth, see `deploy`).
    pub fn enqueue(
        &self,
        repo: &str,
        git_ref: &str,
        old: &str,
        commit: &str,
        project: Option<&str>,
        deploy_ref: Option<&str>,
    ) -> Result<(i64, usize), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms() as i64;
        let superseded = tx.execute(
            "UPDATE jobs SET state = 'superseded', finished_at_ms = ?1 WHERE repo = ?2 AND git_ref = ?3 AND state = 'queued'",
            params![now, repo, git_ref],
        )?;
        tx.execute(
            "INSERT INTO jobs (repo, git_ref, old, commit_id, state, created_at_ms, project, deploy_ref) VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7)",
            params![repo, git_ref, old, commit, now, project, deploy_ref],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok((id, superseded))
    }

    /// Takes the oldest queued job and marks it running.
    pub fn claim_next(&self) -> Result<Option<Claimed>, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let id: Option<i64> = tx
            .query_row(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else { return Ok(None) };
        tx.execute(
            "UPDATE jobs SET state = 'running', started_at_ms = ?1 WHERE id = ?2",
            params![now_ms() as i64, id],
        )?;
        let claimed = tx.query_row(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
            [id],
            |r| {
                Ok(Claimed {
                    job: job_from_row(r)?,
                    deploy_ref: r.get(13)?,
                })
            },
        )?;
        tx.commit()?;
        Ok(Some(claimed))
    }

    pub fn job(&self, id: i64) -> Result<Option<Job>, DbError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_from_row,
            )
            .optional()?)
    }

    /// The specs a succeeded job built, as stored (VmSpec JSON objects).
    pub fn job_specs(&self, id: i64) -> Result<Option<Vec<serde_json::Value>>, DbError> {
        let s: Option<Option<String>> = self
            .conn()
            .query_row("SELECT vm_specs FROM jobs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(match s.flatten() {
            Some(s) => Some(serde_json::from_str(&s)?),
            None => None,
        })
    }

    /// Newest first, optionally for one repository.
    pub fn jobs(&self, repo: Option<&str>, limit: u32) -> Result<Vec<Job>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR repo = ?1) ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![repo, limit], job_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many jobs are in each state (states with none are absent).
    pub fn count_by_state(&self) -> Result<Vec<(String, u64)>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        rows.map(|r| r.map(|(s, n)| (s, n.max(0) as u64)).map_err(DbError::from))
            .collect()
    }

    /// Runs one statement on a job row.
    fn update(&self, sql: &str, params: impl rusqlite::Params) -> Result<(), DbError> {
        self.conn().execute(sql, params)?;
        Ok(())
    }

    /// Ends job `id` now, with `set` (which names `?1`, bound to `value`).
    fn finish(&self, id: i64, set: &str, value: &str) -> Result<(), DbError> {
        self.update(
            &format!("UPDATE jobs SET {set}, finished_at_ms = ?2 WHERE id = ?3"),
            params![value, now_ms() as i64, id],
        )
    }

    pub fn set_timings(&self, id: i64, timings: &Timings) -> Result<(), DbError> {
        self.update(
            "UPDATE jobs SET timings = ?1 WHERE id = ?2",
            params![serde_json::to_string(timings)?, id],
        )
    }

    pub fn fail(&self, id: i64, error: &str) -> Result<(), DbError> {
        self.finish(id, "state = 'failed', error = ?1", error)
    }

    /// Cancels job `id` if it is queued (it ends `cancelled` at once) and
    /// otherwise leaves it be. Returns the job as it is afterwards (a
    /// running job stays `running` until the runner stops it), or none
    /// when there is no such job.
    pub fn cancel_queued(&self, id: i64) -> Result<Option<Job>, DbError> {
        self.update(
            "UPDATE jobs SET state = 'cancelled', finished_at_ms = ?1, error = 'cancelled while queued' WHERE id = ?2 AND state = 'queued'",
            params![now_ms() as i64, id],
        )?;
        self.job(id)
    }

    /// Queues job `id`'s push again (same repository, ref, commits and
    /// claimed project and deploy ref) as a new job, which supersedes
    /// older queued jobs of that ref as any push does. Returns the new id,
    /// or none when there is no job `id`.
    pub fn requeue(&self, id: i64) -> Result<Option<i64>, DbError> {
        let push = self
            .conn()
            .query_row(
                "SELECT repo, git_ref, old, commit_id, project, deploy_ref FROM jobs WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((repo, git_ref, old, commit, project, deploy_ref)) = push else {
            return Ok(None);
        };
        let (new, _) = self.enqueue(
            &repo,
            &git_ref,
            &old,
            &commit,
            project.as_deref(),
            deploy_ref.as_deref(),
        )?;
        Ok(Some(new))
    }

    /// A running job the runner stopped on request ends `cancelled`.
    pub fn cancelled(&self, id: i64, why: &str) -> Result<(), DbError> {
        self.finish(id, "state = 'cancelled', error = ?1", why)
    }

    /// Deletes the finished jobs that ended before `before_ms`; returns
    /// their ids (their logs go with them, see `runner::prune`). Queued
    /// and running jobs stay however old they are, and so do generations
    /// (the control plane's history), whose `job_id` then names a pruned
    /// job.
    pub fn prune_finished_before(&self, before_ms: i64) -> Result<Vec<i64>, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let ids = {
            let mut stmt = tx.prepare(
                "DELETE FROM jobs WHERE state NOT IN ('queued', 'running') AND finished_at_ms < ?1 RETURNING id",
            )?;
            stmt.query_map([before_ms], |r| r.get(0))?
                .collect::<Result<Vec<i64>, _>>()?
        };
        tx.commit()?;
        Ok(ids)
    }

    /// A job that built and checked but may publish nothing: it ends
    /// `built-not-deployed`, with `why` as its reason and `project` (when
    /// known) recorded.
    pub fn built_not_deployed(
        &self,
        id: i64,
        specs_json: &str,
        project: Option<&str>,
        why: &str,
    ) -> Result<(), DbError> {
        self.update(
            "UPDATE jobs SET state = 'built-not-deployed', vm_specs = ?1, error = ?2, project = ?3, finished_at_ms = ?4 WHERE id = ?5",
            params![specs_json, why, project, now_ms() as i64, id],
        )
    }

    /// The number `project`'s next generation gets: one past both ours and
    /// the control plane's (it may have been fed by hand with pcr-test).
    pub fn next_generation(&self, project: &str, remote_active: u64) -> Result<i64, DbError> {
        let ours: Option<i64> = self.conn().query_row(
            "SELECT MAX(number) FROM project_generations WHERE project = ?1",
            [project],
            |r| r.get(0),
        )?;
        Ok(ours.unwrap_or(0).max(remote_active as i64) + 1)
    }

    /// Records the generation and marks its job succeeded, atomically.
    pub fn record_generation(&self, g: &Generation) -> Result<(), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO project_generations (project, number, job_id, commit_id, intent_hash, specs_json, closure, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![g.project, g.number, g.job_id, g.commit, g.intent_hash.as_str(), g.specs_json, g.closure, g.created_at_ms],
        )?;
        tx.execute(
            "UPDATE jobs SET state = 'succeeded', generation = ?1, vm_specs = ?2, project = ?3, finished_at_ms = ?4 WHERE id = ?5",
            params![g.number, g.specs_json, g.project, now_ms() as i64, g.job_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The newest good generation of every project, by project: what the
    /// control plane must run.
    pub fn latest_generations(&self) -> Result<Vec<Generation>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {GENERATION_COLUMNS} FROM project_generations g
             WHERE number = (SELECT MAX(number) FROM project_generations WHERE project = g.project)
             ORDER BY project"
        ))?;
        let rows = stmt.query_map([], generation_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every project's generations, newest first.
    pub fn generations(&self, limit: u32) -> Result<Vec<Generation>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {GENERATION_COLUMNS} FROM project_generations ORDER BY created_at_ms DESC, project, number DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], generation_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The columns `generation_from_row` reads, in its order.
const GENERATION_COLUMNS: &str =
    "number, job_id, commit_id, intent_hash, specs_json, closure, created_at_ms, project";

fn generation_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Generation> {
    Ok(Generation {
        number: r.get(0)?,
        job_id: r.get(1)?,
        commit: r.get(2)?,
        intent_hash: IntentHash::from(r.get::<_, String>(3)?),
        specs_json: r.get(4)?,
        closure: r.get(5)?,
        created_at_ms: r.get(6)?,
        project: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supersede_claim_requeue_and_generations() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ci.sqlite");
        let (db, requeued) = Db::open(&path).unwrap();
        assert_eq!(requeued, 0);
        let (a, _) = db
            .enqueue("/r", "refs/heads/main", "0", "c1", None, None)
            .unwrap();
        let (_other, s) = db
            .enqueue("/r", "refs/heads/dev", "0", "d1", None, None)
            .unwrap();
        assert_eq!(s, 0, "another ref is not superseded");
        let (b, s) = db
            .enqueue("/r", "refs/heads/main", "c1", "c2", None, None)
            .unwrap();
        assert_eq!(s, 1);
        assert_eq!(db.job(a).unwrap().unwrap().state, JobState::Superseded);
        let claimed = db.claim_next().unwrap().unwrap().job;
        assert_eq!(claimed.commit, "d1");
        let claimed = db.claim_next().unwrap().unwrap().job;
        assert_eq!((claimed.id, claimed.state), (b, JobState::Running));
        assert!(db.claim_next().unwrap().is_none());
        // A running job is not superseded by a newer push: it finishes.
        let (_c, s) = db
            .enqueue("/r", "refs/heads/main", "c2", "c3", None, None)
            .unwrap();
        assert_eq!(s, 0);
        assert_eq!(db.job(b).unwrap().unwrap().state, JobState::Running);
        drop(db);

        // A crash left `b` and `d1` running: both come back queued.
        let (db, requeued) = Db::open(&path).unwrap();
        assert_eq!(requeued, 2);
        assert_eq!(db.job(b).unwrap().unwrap().state, JobState::Queued);

        assert_eq!(db.next_generation("default", 0).unwrap(), 1);
        assert_eq!(
            db.next_generation("default", 7).unwrap(),
            8,
            "the control plane's number wins when larger"
        );
        let g = Generation {
            project: "default".into(),
            number: 1,
            job_id: b,
            commit: "c2".into(),
            intent_hash: "h".into(),
            closure: "/nix/store/x".into(),
            created_at_ms: 1,
            specs_json: "[]".into(),
        };
        db.record_generation(&g).unwrap();
        assert_eq!(db.next_generation("default", 0).unwrap(), 2);
        assert_eq!(db.latest_generations().unwrap()[0].commit, "c2");
        assert_eq!(
            db.next_generation("team-a", 0).unwrap(),
            1,
            "numbers are per project"
        );
        let job = db.job(b).unwrap().unwrap();
        assert_eq!((job.state, job.generation), (JobState::Succeeded, Some(1)));
        assert_eq!(
            db.job_specs(b).unwrap().unwrap(),
            Vec::<serde_json::Value>::new()
        );
        let listed = db.jobs(Some("/r"), 10).unwrap();
        assert!(listed.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        assert!(db.jobs(Some("/other"), 10).unwrap().is_empty());
    }

    #[test]
    fn unknown_states_and_timings_are_errors_not_failures() {
        let tmp = tempfile::tempdir().unwrap();
        let (db, _) = Db::open(&tmp.path().join("ci.sqlite")).unwrap();
        let (id, _) = db
            .enqueue("/r", "refs/heads/main", "0", "c1", None, None)
            .unwrap();
        assert_eq!(db.job(id).unwrap().unwrap().timings, Timings::default());
        let t = Timings {
            queue_ms: Some(3),
            fetch_ms: Some(40),
            ..Timings::default()
        };
        db.set_timings(id, &t).unwrap();
        assert_eq!(db.job(id).unwrap().unwrap().timings, t);
        db.conn()
            .execute("UPDATE jobs SET state = 'exploded' WHERE id = ?1", [id])
            .unwrap();
        let err = db.job(id).unwrap_err();
        assert!(
            matches!(
                err,
                DbError::Query(rusqlite::Error::FromSqlConversionFailure(5, _, _))
            ),
            "{err:?}"
        );
        db.conn()
            .execute(
                "UPDATE jobs SET state = 'failed', timings = 'nope' WHERE id = ?1",
                [id],
            )
            .unwrap();
        assert!(db.job(id).is_err());
    }

    /// Generations are numbered per project, the latest of each is what a
    /// reconnect re-publishes, and a not-deployed job records its reason.
    #[test]
    fn projects_have_their_own_generations() {
        let tmp = tempfile::tempdir().unwrap();
        let (db, _) = Db::open(&tmp.path().join("ci.sqlite")).unwrap();
        let gen_of = |project: &str, number: i64, job_id: i64| Generation {
            project: project.into(),
            number,
            job_id,
            commit: format!("{project}-{number}"),
            intent_hash: "h".into(),
            closure: String::new(),
            created_at_ms: number,
            specs_json: "[]".into(),
        };
        for (project, number) in [("a", 1), ("a", 2), ("b", 1)] {
            let (id, _) = db
                .enqueue(
                    &format!("/{project}"),
                    "refs/heads/main",
                    "0",
                    "c",
                    Some(project),
                    Some("refs/heads/main"),
                )
                .unwrap();
            db.record_generation(&gen_of(project, number, id)).unwrap();
        }
        let latest: Vec<String> = db
            .latest_generations()
            .unwrap()
            .into_iter()
            .map(|g| g.commit)
            .collect();
        assert_eq!(latest, ["a-2", "b-1"]);
        assert_eq!(db.next_generation("a", 0).unwrap(), 3);
        assert_eq!(db.next_generation("b", 0).unwrap(), 2);
        let (id, _) = db
            .enqueue("/x", "refs/heads/main", "0", "c", None, None)
            .unwrap();
        let claimed = db.claim_next().unwrap().unwrap();
        assert_eq!((claimed.job.id, claimed.deploy_ref), (id, None));
        db.built_not_deployed(id, "[]", None, "not a deploy repository")
            .unwrap();
        let job = db.job(id).unwrap().unwrap();
        assert_eq!(
            (job.state, job.error.as_deref(), job.generation),
            (
                JobState::BuiltNotDeployed,
                Some("not a deploy repository"),
                None
            )
        );
    }

    /// A database from before projects opens: its generations become the
    /// default project's.
    #[test]
    fn a_database_from_before_projects_migrates() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ci.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, repo TEXT NOT NULL, git_ref TEXT NOT NULL,
               old TEXT NOT NULL, commit_id TEXT NOT NULL, state TEXT NOT NULL, created_at_ms INTEGER NOT NULL,
               started_at_ms INTEGER, finished_at_ms INTEGER, generation INTEGER, error TEXT, vm_specs TEXT,
               timings TEXT NOT NULL DEFAULT '{}');
             CREATE TABLE generations (number INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, commit_id TEXT NOT NULL,
               intent_hash TEXT NOT NULL, specs_json TEXT NOT NULL, closure TEXT NOT NULL, created_at_ms INTEGER NOT NULL);
             INSERT INTO jobs (repo, git_ref, old, commit_id, state, created_at_ms, generation)
               VALUES ('/r', 'refs/heads/main', '0', 'c7', 'succeeded', 1, 7);
             INSERT INTO generations VALUES (7, 1, 'c7', 'h', '[]', '', 1);",
        )
        .unwrap();
        drop(conn);
        let (db, _) = Db::open(&path).unwrap();
        let latest = db.latest_generations().unwrap();
        assert_eq!(
            (latest[0].project.as_str(), latest[0].number),
            ("default", 7)
        );
        assert_eq!(db.job(1).unwrap().unwrap().state, JobState::Succeeded);
        assert_eq!(db.next_generation("default", 0).unwrap(), 8);
    }

    #[test]
    fn cancel_and_prune() {
        let tmp = tempfile::tempdir().unwrap();
        let (db, _) = Db::open(&tmp.path().join("ci.sqlite")).unwrap();
        let (a, _) = db
            .enqueue("/r", "refs/heads/a", "0", "c1", None, None)
            .unwrap();
        let (b, _) = db
            .enqueue("/r", "refs/heads/b", "0", "c2", None, None)
            .unwrap();
        let (c, _) = db
            .enqueue("/r", "refs/heads/c", "0", "c3", None, None)
            .unwrap();
        assert_eq!(db.claim_next().unwrap().unwrap().job.id, a);
        // A running job is left to the runner; a queued one ends now.
        assert_eq!(
            db.cancel_queued(a).unwrap().unwrap().state,
            JobState::Running
        );
        assert_eq!(
            db.cancel_queued(b).unwrap().unwrap().state,
            JobState::Cancelled
        );
        assert!(db.cancel_queued(99).unwrap().is_none());
        db.cancelled(a, "cancelled during build").unwrap();
        let job = db.job(a).unwrap().unwrap();
        assert_eq!(job.state, JobState::Cancelled);
        assert!(job.finished_at_ms.is_some());
        // Only finished jobs that ended before the cut go.
        let later = now_ms() as i64 + 1000;
        let mut pruned = db.prune_finished_before(later).unwrap();
        pruned.sort();
        assert_eq!(pruned, vec![a, b]);
        assert!(db.job(a).unwrap().is_none());
        assert_eq!(db.job(c).unwrap().unwrap().state, JobState::Queued);
        assert!(db.prune_finished_before(0).unwrap().is_empty());
    }
}
