//! SQLite storage: versioned migrations and every query repohub runs.
//!
//! One connection behind a mutex: queries are short and local, so a pool
//! would only add contention on the 2-core hosts this runs on. All SQL uses
//! bound parameters; no string is ever spliced into a statement.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use commands::telemetry::now_ms;
use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database schema version {found} is newer than this binary knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("{0} already exists")]
    Conflict(&'static str),
}

/// Migrations, applied in order; `PRAGMA user_version` records how many ran.
/// Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, sessions, tokens, projects, members, repositories.
    "CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL
    );
    CREATE TABLE access_tokens (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at_ms INTEGER NOT NULL,
        last_used_ms INTEGER
    );
    CREATE TABLE projects (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL,
        public INTEGER NOT NULL,
        owner_id INTEGER NOT NULL REFERENCES users(id),
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE members (
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        PRIMARY KEY (project_id, user_id)
    );
    CREATE TABLE repositories (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        UNIQUE (project_id, name)
    );",
    // 2: the outbox of push events waiting for (or delivered to) ci_service.
    "CREATE TABLE push_events (
        id INTEGER PRIMARY KEY,
        repo_path TEXT NOT NULL,
        ref_name TEXT NOT NULL,
        old TEXT NOT NULL,
        new TEXT NOT NULL,
        received_at_ms INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        last_error TEXT,
        job_id INTEGER,
        delivered_at_ms INTEGER
    );
    CREATE INDEX push_events_due ON push_events (delivered_at_ms, next_attempt_ms);",
    // 3: tenancy. Admins and the admin-granted right to create projects;
    // each project's deploy repository and ref (existing projects deploy
    // their first repository's main, which is what they did before); the
    // project and deploy ref each push event is forwarded with.
    "ALTER TABLE users ADD COLUMN is_admin INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN may_create_projects INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE projects ADD COLUMN deploy_repo TEXT;
    ALTER TABLE projects ADD COLUMN deploy_ref TEXT;
    UPDATE projects SET
        deploy_repo = (SELECT r.name FROM repositories r WHERE r.project_id = projects.id ORDER BY r.id LIMIT 1),
        deploy_ref = 'refs/heads/main'
    WHERE EXISTS (SELECT 1 FROM repositories r WHERE r.project_id = projects.id);
    ALTER TABLE push_events ADD COLUMN project TEXT;
    ALTER TABLE push_events ADD COLUMN deploy_ref TEXT;",
];

/// The deploy ref a project's first repository gets.
pub const DEFAULT_DEPLOY_REF: &str = "refs/heads/main";

#[derive(Debug, Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub name: String,
    /// May see and manage every project and grant rights to accounts.
    pub admin: bool,
    /// An admin allowed this account to create projects.
    pub may_create_projects: bool,
}

/// The columns `user_row` reads, in its order.
const USER_COLS: &str = "u.id, u.name, u.is_admin, u.may_create_projects";

#[derive(Debug, Clone)]
pub struct Project {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub public: bool,
    pub owner: String,
    /// The repository whose pushes to `deploy_ref` become this project's
    /// generations; `None` until one is set (see `create_repo`).
    pub deploy_repo: Option<String>,
    pub deploy_ref: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Repo {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub created_at_ms: i64,
    pub last_used_ms: Option<i64>,
}

/// One push in the outbox: the event ci_service is sent, and how often
/// sending it was tried.
#[derive(Debug, Clone)]
pub struct QueuedPush {
    pub id: i64,
    pub event: commands::ci_api::PushEvent,
    pub attempts: i64,
}

impl Db {
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    fn init(mut conn: Connection) -> Result<Self, DbError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable:
        // every statement is atomic on its own.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every row of `sql` with `params`, each turned into a `T` by `row`.
    fn query_all<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, DbError> {
        let c = self.lock();
        let mut st = c.prepare(sql)?;
        let rows = st.query_map(params, row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn schema_version(&self) -> Result<i64, DbError> {
        Ok(self
            .lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    // ---- users and sessions ----

    pub fn create_user(&self, name: &str, password_hash: &str) -> Result<User, DbError> {
        self.create_user_with(name, password_hash, false, false)
    }

    /// An account with its rights set from the start (`repohub admin
    /// create-user`, or open signup when signed-up accounts may create
    /// projects).
    pub fn create_user_with(
        &self,
        name: &str,
        password_hash: &str,
        admin: bool,
        may_create_projects: bool,
    ) -> Result<User, DbError> {
        let c = self.lock();
        let r = c.execute(
            "INSERT INTO users (name, password_hash, created_at_ms, is_admin, may_create_projects)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                name,
                password_hash,
                now_ms() as i64,
                admin,
                may_create_projects
            ],
        );
        match r {
            Ok(_) => Ok(User {
                id: c.last_insert_rowid(),
                name: name.to_owned(),
                admin,
                may_create_projects,
            }),
            Err(e) if is_unique_violation(&e) => Err(DbError::Conflict("user")),
            Err(e) => Err(e.into()),
        }
    }

    pub fn user_password(&self, name: &str) -> Result<Option<(User, String)>, DbError> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {USER_COLS}, u.password_hash FROM users u WHERE u.name = ?1"),
                params![name],
                |r| Ok((user_row(r)?, r.get(4)?)),
            )
            .optional()?)
    }

    pub fn user_by_name(&self, name: &str) -> Result<Option<User>, DbError> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {USER_COLS} FROM users u WHERE u.name = ?1"),
                params![name],
                user_row,
            )
            .optional()?)
    }

    /// Every account, by name (the admin page).
    pub fn users(&self) -> Result<Vec<User>, DbError> {
        self.query_all(
            &format!("SELECT {USER_COLS} FROM users u ORDER BY u.name"),
            [],
            user_row,
        )
    }

    /// Sets an account's rights; false when there is no such account.
    pub fn set_rights(
        &self,
        name: &str,
        admin: Option<bool>,
        may_create_projects: Option<bool>,
    ) -> Result<bool, DbError> {
        Ok(self.lock().execute(
            "UPDATE users SET is_admin = COALESCE(?2, is_admin),
                 may_create_projects = COALESCE(?3, may_create_projects)
             WHERE name = ?1",
            params![name, admin, may_create_projects],
        )? > 0)
    }

    pub fn create_session(
        &self,
        token_hash: &str,
        user_id: i64,
        ttl_ms: i64,
    ) -> Result<(), DbError> {
        let now = now_ms() as i64;
        let c = self.lock();
        c.execute(
            "DELETE FROM sessions WHERE expires_at_ms < ?1",
            params![now],
        )?;
        c.execute(
            "INSERT INTO sessions (token_hash, user_id, created_at_ms, expires_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![token_hash, user_id, now, now + ttl_ms],
        )?;
        Ok(())
    }

    pub fn session_user(&self, token_hash: &str) -> Result<Option<User>, DbError> {
        Ok(self
            .lock()
            .query_row(
                &format!(
                    "SELECT {USER_COLS} FROM sessions s JOIN users u ON u.id = s.user_id
                     WHERE s.token_hash = ?1 AND s.expires_at_ms > ?2"
                ),
                params![token_hash, now_ms() as i64],
                user_row,
            )
            .optional()?)
    }

    pub fn delete_session(&self, token_hash: &str) -> Result<(), DbError> {
        self.lock().execute(
            "DELETE FROM sessions WHERE token_hash = ?1",
            params![token_hash],
        )?;
        Ok(())
    }

    // ---- personal access tokens ----

    pub fn create_token(&self, user_id: i64, name: &str, token_hash: &str) -> Result<i64, DbError> {
        let c = self.lock();
        c.execute(
            "INSERT INTO access_tokens (user_id, name, token_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![user_id, name, token_hash, now_ms() as i64],
        )?;
        Ok(c.last_insert_rowid())
    }

    pub fn list_tokens(&self, user_id: i64) -> Result<Vec<TokenInfo>, DbError> {
        self.query_all(
            "SELECT id, name, created_at_ms, last_used_ms FROM access_tokens WHERE user_id = ?1 ORDER BY id",
            params![user_id],
            |r| {
                Ok(TokenInfo {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_at_ms: r.get(2)?,
                    last_used_ms: r.get(3)?,
                })
            },
        )
    }

    pub fn delete_token(&self, user_id: i64, id: i64) -> Result<bool, DbError> {
        Ok(self.lock().execute(
            "DELETE FROM access_tokens WHERE id = ?1 AND user_id = ?2",
            params![id, user_id],
        )? > 0)
    }

    pub fn token_user(&self, token_hash: &str) -> Result<Option<User>, DbError> {
        let c = self.lock();
        let u = c
            .query_row(
                &format!(
                    "SELECT {USER_COLS} FROM access_tokens t JOIN users u ON u.id = t.user_id
                     WHERE t.token_hash = ?1"
                ),
                params![token_hash],
                user_row,
            )
            .optional()?;
        if u.is_some() {
            c.execute(
                "UPDATE access_tokens SET last_used_ms = ?1 WHERE token_hash = ?2",
                params![now_ms() as i64, token_hash],
            )?;
        }
        Ok(u)
    }

    // ---- projects, members, repositories ----

    pub fn create_project(
        &self,
        name: &str,
        description: &str,
        public: bool,
        owner_id: i64,
    ) -> Result<i64, DbError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        let r = tx.execute(
            "INSERT INTO projects (name, description, public, owner_id, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, description, public, owner_id, now_ms() as i64],
        );
        match r {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(DbError::Conflict("project")),
            Err(e) => return Err(e.into()),
        }
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO members (project_id, user_id, role) VALUES (?1, ?2, 'owner')",
            params![id, owner_id],
        )?;
        tx.commit()?;
        Ok(id)
    }

    pub fn project(&self, name: &str) -> Result<Option<Project>, DbError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT p.id, p.name, p.description, p.public, u.name, p.deploy_repo, p.deploy_ref FROM projects p
                 JOIN users u ON u.id = p.owner_id WHERE p.name = ?1",
                params![name],
                project_row,
            )
            .optional()?)
    }

    /// Projects the viewer may see: public ones and those they belong to
    /// (an admin sees every project).
    pub fn visible_projects(&self, user: Option<&User>) -> Result<Vec<Project>, DbError> {
        self.query_all(
            "SELECT p.id, p.name, p.description, p.public, u.name, p.deploy_repo, p.deploy_ref FROM projects p
             JOIN users u ON u.id = p.owner_id
             WHERE ?2 OR p.public = 1
                OR EXISTS (SELECT 1 FROM members m WHERE m.project_id = p.id AND m.user_id = ?1)
             ORDER BY p.name",
            params![user.map_or(-1, |u| u.id), user.is_some_and(|u| u.admin)],
            project_row,
        )
    }

    pub fn role(&self, project_id: i64, user_id: i64) -> Result<Option<String>, DbError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT role FROM members WHERE project_id = ?1 AND user_id = ?2",
                params![project_id, user_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn members(&self, project_id: i64) -> Result<Vec<(String, String)>, DbError> {
        self.query_all(
            "SELECT u.name, m.role FROM members m JOIN users u ON u.id = m.user_id
             WHERE m.project_id = ?1 ORDER BY u.name",
            params![project_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    pub fn add_member(&self, project_id: i64, user_id: i64) -> Result<(), DbError> {
        self.lock().execute(
            "INSERT OR IGNORE INTO members (project_id, user_id, role) VALUES (?1, ?2, 'member')",
            params![project_id, user_id],
        )?;
        Ok(())
    }

    pub fn delete_project(&self, project_id: i64) -> Result<(), DbError> {
        self.lock()
            .execute("DELETE FROM projects WHERE id = ?1", params![project_id])?;
        Ok(())
    }

    /// Creates a repository. A project's first repository becomes its
    /// deploy repository on `refs/heads/main` (the single-repository setup
    /// needs no extra step); owners change or clear that on the project page.
    pub fn create_repo(&self, project_id: i64, name: &str) -> Result<i64, DbError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        match tx.execute(
            "INSERT INTO repositories (project_id, name, created_at_ms) VALUES (?1, ?2, ?3)",
            params![project_id, name, now_ms() as i64],
        ) {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(DbError::Conflict("repository")),
            Err(e) => return Err(e.into()),
        }
        let id = tx.last_insert_rowid();
        tx.execute(
            "UPDATE projects SET deploy_repo = ?2, deploy_ref = ?3
             WHERE id = ?1 AND deploy_repo IS NULL
               AND (SELECT COUNT(*) FROM repositories WHERE project_id = ?1) = 1",
            params![project_id, name, DEFAULT_DEPLOY_REF],
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Sets (or with `None`, clears) the project's deploy repository and ref.
    pub fn set_deploy(&self, project_id: i64, target: Option<(&str, &str)>) -> Result<(), DbError> {
        let (repo, r) = target.unzip();
        self.lock().execute(
            "UPDATE projects SET deploy_repo = ?2, deploy_ref = ?3 WHERE id = ?1",
            params![project_id, repo, r],
        )?;
        Ok(())
    }

    pub fn repos(&self, project_id: i64) -> Result<Vec<Repo>, DbError> {
        self.query_all(
            "SELECT id, name FROM repositories WHERE project_id = ?1 ORDER BY name",
            params![project_id],
            repo_row,
        )
    }

    pub fn repo(&self, project_id: i64, name: &str) -> Result<Option<Repo>, DbError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT id, name FROM repositories WHERE project_id = ?1 AND name = ?2",
                params![project_id, name],
                repo_row,
            )
            .optional()?)
    }

    /// Deletes a repository; if it was the deploy repository, the project
    /// deploys nothing until an owner picks another one (a later repository
    /// with the same name must not inherit the right silently).
    pub fn delete_repo(&self, repo_id: i64) -> Result<(), DbError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        tx.execute(
            "UPDATE projects SET deploy_repo = NULL, deploy_ref = NULL
             WHERE deploy_repo = (SELECT name FROM repositories WHERE id = ?1)
               AND id = (SELECT project_id FROM repositories WHERE id = ?1)",
            params![repo_id],
        )?;
        tx.execute("DELETE FROM repositories WHERE id = ?1", params![repo_id])?;
        tx.commit()?;
        Ok(())
    }

    /// Every repository as (project, repository), for startup upkeep.
    pub fn all_repos(&self) -> Result<Vec<(String, String)>, DbError> {
        self.query_all(
            "SELECT p.name, r.name FROM repositories r JOIN projects p ON p.id = r.project_id
             ORDER BY p.name, r.name",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    // ---- push events (outbox to ci_service) ----

    /// Queues `event` as it will be sent: its project and deploy ref are
    /// fixed when the push is recorded, so a later change of the deploy
    /// repository does not turn an old push into a deploy.
    pub fn enqueue_push(&self, event: &commands::ci_api::PushEvent) -> Result<i64, DbError> {
        let c = self.lock();
        let now = now_ms() as i64;
        c.execute(
            "INSERT INTO push_events (repo_path, ref_name, old, new, received_at_ms, next_attempt_ms, project, deploy_ref)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)",
            params![
                event.repo,
                event.git_ref,
                event.old,
                event.new,
                now,
                event.project,
                event.deploy_ref
            ],
        )?;
        Ok(c.last_insert_rowid())
    }

    pub fn due_pushes(&self, limit: i64) -> Result<Vec<QueuedPush>, DbError> {
        self.query_all(
            "SELECT id, repo_path, ref_name, old, new, attempts, project, deploy_ref FROM push_events
             WHERE delivered_at_ms IS NULL AND next_attempt_ms <= ?1 ORDER BY id LIMIT ?2",
            params![now_ms() as i64, limit],
            |r| {
                Ok(QueuedPush {
                    id: r.get(0)?,
                    event: commands::ci_api::PushEvent {
                        repo: r.get(1)?,
                        git_ref: r.get(2)?,
                        old: r.get(3)?,
                        new: r.get(4)?,
                        project: r.get(6)?,
                        deploy_ref: r.get(7)?,
                    },
                    attempts: r.get(5)?,
                })
            },
        )
    }

    pub fn push_delivered(&self, id: i64, job_id: Option<i64>) -> Result<(), DbError> {
        self.lock().execute(
            "UPDATE push_events SET delivered_at_ms = ?1, job_id = ?2, attempts = attempts + 1, last_error = NULL
             WHERE id = ?3",
            params![now_ms() as i64, job_id, id],
        )?;
        Ok(())
    }

    pub fn push_failed(&self, id: i64, error: &str, next_attempt_ms: i64) -> Result<(), DbError> {
        self.lock().execute(
            "UPDATE push_events SET attempts = attempts + 1, last_error = ?1, next_attempt_ms = ?2 WHERE id = ?3",
            params![error, next_attempt_ms, id],
        )?;
        Ok(())
    }

    /// (pending, delivered) counts for a repository path, shown on its page.
    pub fn push_counts(&self, repo_path: &str) -> Result<(i64, i64), DbError> {
        Ok(self.lock().query_row(
            "SELECT COUNT(*) FILTER (WHERE delivered_at_ms IS NULL), COUNT(*) FILTER (WHERE delivered_at_ms IS NOT NULL)
             FROM push_events WHERE repo_path = ?1",
            params![repo_path],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }
}

/// [`USER_COLS`] as a user.
fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        admin: r.get(2)?,
        may_create_projects: r.get(3)?,
    })
}

/// `id, name` columns as a repository.
fn repo_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Repo> {
    Ok(Repo {
        id: r.get(0)?,
        name: r.get(1)?,
    })
}

fn project_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        public: r.get(3)?,
        owner: r.get(4)?,
        deploy_repo: r.get(5)?,
        deploy_ref: r.get(6)?,
    })
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > known {
        return Err(DbError::TooNew { found, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        // user_version cannot be a bound parameter; the value is our own integer.
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database path in a fresh directory (kept alive by the guard).
    fn temp_path() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        (dir, path)
    }

    #[test]
    fn migrations_apply_once_and_reopen() {
        let (_dir, path) = temp_path();
        let db = Db::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let u = db.create_user("ann", "h").unwrap();
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.user_by_name("ann").unwrap().unwrap().id, u.id);
    }

    #[test]
    fn newer_schema_is_refused() {
        let (_dir, path) = temp_path();
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(
            Db::open(&path),
            Err(DbError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn sql_metacharacters_are_data() {
        let (_dir, path) = temp_path();
        let db = Db::open(&path).unwrap();
        let evil = "x'); DROP TABLE users; --";
        db.create_user(evil, "h").unwrap();
        assert_eq!(db.user_by_name(evil).unwrap().unwrap().name, evil);
        assert!(matches!(
            db.create_user(evil, "h"),
            Err(DbError::Conflict("user"))
        ));
        let uid = db.user_by_name(evil).unwrap().unwrap().id;
        let pid = db
            .create_project("p", "'; DELETE FROM projects; --", true, uid)
            .unwrap();
        assert_eq!(db.project("p").unwrap().unwrap().id, pid);
        assert_eq!(db.visible_projects(None).unwrap().len(), 1);
    }
}
