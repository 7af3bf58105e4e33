//! The control plane's durable memory (`--state-dir DIR` →
//! `DIR/state.sqlite`): every published generation with its specs and
//! metadata, and the event log, so that history, events and each
//! project's active generation survive a restart.
//!
//! Write-through: the server calls this after each accepted change (the
//! state machine in `state` stays pure and in memory). SQLite in WAL mode
//! with `synchronous = NORMAL`: a power cut may lose the last moments, a
//! crash of the process loses nothing written. Both tables are bounded:
//! `HISTORY` generations and `EVENTS_PER_PROJECT` events per project.
//!
//! A file that is not ours is never replaced: `application_id` marks the
//! file as Procurator's and `user_version` is its schema (migrated
//! forward, refused when newer than this binary knows).

use std::path::{Path, PathBuf};

use commands::model::{EventView, GenerationDetailView, GenerationView};
use commands::types::VmSpec;
use rusqlite::{Connection, OptionalExtension, params};

/// `application_id` of a control-plane state file ("PCRS").
pub const APPLICATION_ID: i32 = 0x5043_5253;
/// The schema version this binary writes.
pub const SCHEMA_VERSION: i32 = 1;
/// The file inside `--state-dir`.
pub const FILE: &str = "state.sqlite";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot read the control-plane state {} (left as it is: move it away to start with an empty history)",
        path.display()
    )]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "{} is not a Procurator control-plane state file ({why}); it is left as it is: move it away or name another --state-dir",
        path.display()
    )]
    Foreign { path: PathBuf, why: String },
    #[error(
        "{} has schema version {found}, newer than the {SCHEMA_VERSION} this control plane knows; run the newer control plane or move the file away",
        path.display()
    )]
    Newer { path: PathBuf, found: i32 },
    #[error("cannot {what} in the state file")]
    Sql {
        what: &'static str,
        source: rusqlite::Error,
    },
    #[error("the stored specs of generation {number} of project {project} do not parse")]
    Specs {
        project: String,
        number: u64,
        source: serde_json::Error,
    },
}

fn sql(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { what, source }
}

/// What a previous run left: generations (oldest first per project) and
/// events (oldest first).
#[derive(Debug, Default)]
pub struct Loaded {
    pub generations: Vec<GenerationDetailView>,
    pub events: Vec<EventView>,
}

/// An open state file.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    generations_per_project: usize,
    events_per_project: usize,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Store {
    /// Opens (creating it and `dir` when missing) `dir/state.sqlite`,
    /// keeping the newest `generations_per_project` generations and
    /// `events_per_project` events of each project. Refuses a file that is
    /// not a control-plane state file, or one of a newer schema.
    pub fn open(
        dir: &Path,
        generations_per_project: usize,
        events_per_project: usize,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE);
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        // The first read of the header: a file that is not SQLite fails here.
        let app_id: i32 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(open_err)?;
        let version: i32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(open_err)?;
        if app_id == 0 && tables > 0 {
            return Err(StoreError::Foreign {
                path,
                why: format!(
                    "an SQLite database with {tables} other objects and no Procurator mark"
                ),
            });
        }
        if app_id != 0 && app_id != APPLICATION_ID {
            return Err(StoreError::Foreign {
                path,
                why: format!("application_id {app_id:#x}, not {APPLICATION_ID:#x}"),
            });
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::Newer {
                path,
                found: version,
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        let store = Store {
            conn,
            path,
            generations_per_project: generations_per_project.max(1),
            events_per_project: events_per_project.max(1),
        };
        store.migrate(version)?;
        Ok(store)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Brings the schema from `version` to [`SCHEMA_VERSION`], in one
    /// transaction per step.
    fn migrate(&self, version: i32) -> Result<(), StoreError> {
        if version < 1 {
            self.conn
                .execute_batch(&format!(
                    "BEGIN;
                     CREATE TABLE generations (
                         project TEXT NOT NULL,
                         number INTEGER NOT NULL,
                         commit_id TEXT NOT NULL,
                         intent_hash TEXT NOT NULL,
                         vm_count INTEGER NOT NULL,
                         published_at_ms INTEGER NOT NULL,
                         converged_at_ms INTEGER NOT NULL,
                         author TEXT NOT NULL,
                         message TEXT NOT NULL,
                         job_id INTEGER NOT NULL,
                         specs TEXT NOT NULL,
                         rollout TEXT NOT NULL DEFAULT '',
                         PRIMARY KEY (project, number)
                     );
                     CREATE TABLE events (
                         id INTEGER PRIMARY KEY,
                         at_ms INTEGER NOT NULL,
                         project TEXT NOT NULL,
                         kind TEXT NOT NULL,
                         vm TEXT NOT NULL,
                         worker_id TEXT NOT NULL,
                         generation INTEGER NOT NULL,
                         message TEXT NOT NULL
                     );
                     CREATE INDEX events_by_project ON events (project, id);
                     PRAGMA application_id = {APPLICATION_ID};
                     PRAGMA user_version = 1;
                     COMMIT;"
                ))
                .map_err(sql("create the schema"))?;
        }
        Ok(())
    }

    /// Everything a previous run persisted.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT project, number, commit_id, intent_hash, vm_count, published_at_ms,
                        converged_at_ms, author, message, job_id, specs, rollout
                 FROM generations ORDER BY project, number",
            )
            .map_err(sql("read the generations"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    GenerationView {
                        project: r.get(0)?,
                        number: to_u64(r.get(1)?),
                        commit: r.get(2)?,
                        intent_hash: r.get(3)?,
                        vm_count: u32::try_from(r.get::<_, i64>(4)?).unwrap_or(u32::MAX),
                        published_at_ms: to_u64(r.get(5)?),
                        converged_at_ms: to_u64(r.get(6)?),
                        author: r.get(7)?,
                        message: r.get(8)?,
                        job_id: to_u64(r.get(9)?),
                        rollout: r.get(11)?,
                    },
                    r.get::<_, String>(10)?,
                ))
            })
            .map_err(sql("read the generations"))?;
        let mut generations = Vec::new();
        for row in rows {
            let (generation, specs) = row.map_err(sql("read the generations"))?;
            let specs: Vec<VmSpec> =
                serde_json::from_str(&specs).map_err(|source| StoreError::Specs {
                    project: generation.project.clone(),
                    number: generation.number,
                    source,
                })?;
            generations.push(GenerationDetailView { generation, specs });
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, at_ms, project, kind, vm, worker_id, generation, message
                 FROM events ORDER BY id",
            )
            .map_err(sql("read the events"))?;
        let events = stmt
            .query_map([], |r| {
                Ok(EventView {
                    id: to_u64(r.get(0)?),
                    at_ms: to_u64(r.get(1)?),
                    project: r.get(2)?,
                    kind: r.get(3)?,
                    vm: r.get(4)?,
                    worker_id: r.get(5)?,
                    generation: to_u64(r.get(6)?),
                    message: r.get(7)?,
                })
            })
            .map_err(sql("read the events"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("read the events"))?;
        Ok(Loaded {
            generations,
            events,
        })
    }

    /// Writes a published generation, dropping its project's oldest
    /// beyond the bound.
    pub fn save_generation(&mut self, g: &GenerationDetailView) -> Result<(), StoreError> {
        let specs = serde_json::to_string(&g.specs).map_err(|source| StoreError::Specs {
            project: g.generation.project.clone(),
            number: g.generation.number,
            source,
        })?;
        let v = &g.generation;
        let tx = self.conn.transaction().map_err(sql("write a generation"))?;
        tx.execute(
            "INSERT OR REPLACE INTO generations (project, number, commit_id, intent_hash,
                 vm_count, published_at_ms, converged_at_ms, author, message, job_id, specs,
                 rollout)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                v.project,
                to_i64(v.number),
                v.commit,
                v.intent_hash,
                i64::from(v.vm_count),
                to_i64(v.published_at_ms),
                to_i64(v.converged_at_ms),
                v.author,
                v.message,
                to_i64(v.job_id),
                specs,
                v.rollout,
            ],
        )
        .map_err(sql("write a generation"))?;
        tx.execute(
            "DELETE FROM generations WHERE project = ?1 AND number NOT IN
                 (SELECT number FROM generations WHERE project = ?1 ORDER BY number DESC LIMIT ?2)",
            params![v.project, to_i64(self.generations_per_project as u64)],
        )
        .map_err(sql("prune the generations"))?;
        tx.commit().map_err(sql("write a generation"))
    }

    /// Records when generation `number` of `project` converged.
    pub fn set_converged(
        &mut self,
        project: &str,
        number: u64,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE generations SET converged_at_ms = ?3 WHERE project = ?1 AND number = ?2",
                params![project, to_i64(number), to_i64(at_ms)],
            )
            .map_err(sql("record a convergence"))?;
        Ok(())
    }

    /// Records generation `number` of `project`'s rollout line (see
    /// `GenerationView::rollout`), so a restart resumes a paused or
    /// reverted rollout as it was.
    pub fn set_rollout(
        &mut self,
        project: &str,
        number: u64,
        line: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE generations SET rollout = ?3 WHERE project = ?1 AND number = ?2",
                params![project, to_i64(number), line],
            )
            .map_err(sql("record a rollout"))?;
        Ok(())
    }

    /// Appends `events` in one transaction, dropping each touched
    /// project's oldest beyond the bound.
    pub fn save_events(&mut self, events: &[EventView]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let bound = to_i64(self.events_per_project as u64);
        let tx = self.conn.transaction().map_err(sql("write events"))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO events (id, at_ms, project, kind, vm, worker_id, generation, message)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(sql("write events"))?;
            for e in events {
                insert
                    .execute(params![
                        to_i64(e.id),
                        to_i64(e.at_ms),
                        e.project,
                        e.kind,
                        e.vm,
                        e.worker_id,
                        to_i64(e.generation),
                        e.message,
                    ])
                    .map_err(sql("write events"))?;
            }
            let mut prune = tx
                .prepare_cached(
                    "DELETE FROM events WHERE project = ?1 AND id <=
                         (SELECT id FROM events WHERE project = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                )
                .map_err(sql("prune events"))?;
            let mut projects: Vec<&str> = events.iter().map(|e| e.project.as_str()).collect();
            projects.sort_unstable();
            projects.dedup();
            for p in projects {
                prune
                    .execute(params![p, bound])
                    .map_err(sql("prune events"))?;
            }
        }
        tx.commit().map_err(sql("write events"))
    }

    /// How many events of `project` the file holds (tests, diagnostics).
    pub fn event_count(&self, project: &str) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM events WHERE project = ?1",
                [project],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(sql("count events"))
            .map(|n| to_u64(n.unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(project: &str, number: u64) -> GenerationDetailView {
        GenerationDetailView {
            generation: GenerationView {
                project: project.into(),
                number,
                commit: format!("c{number}"),
                intent_hash: format!("i{number}"),
                vm_count: 1,
                published_at_ms: number * 10,
                author: "Ada".into(),
                message: "first line".into(),
                job_id: 7,
                converged_at_ms: 0,
                rollout: String::new(),
            },
            specs: vec![testkit::fixtures::spec("web-0", &format!("h{number}"))],
        }
    }

    fn event(id: u64, project: &str) -> EventView {
        EventView {
            id,
            at_ms: id,
            project: project.into(),
            kind: "vm-placed".into(),
            vm: "web-0".into(),
            worker_id: "a".into(),
            generation: 1,
            message: format!("e{id}"),
        }
    }

    /// What is written is read back after reopening, bounded per project.
    #[test]
    fn round_trip_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path(), 3, 4).unwrap();
            for n in 1..=5 {
                s.save_generation(&generation("a", n)).unwrap();
            }
            s.save_generation(&generation("b", 1)).unwrap();
            s.set_converged("a", 5, 99).unwrap();
            s.set_rollout("a", 5, "paused: web-1 unhealthy").unwrap();
            let evs: Vec<EventView> = (1..=10).map(|i| event(i, "a")).collect();
            s.save_events(&evs).unwrap();
            s.save_events(&[event(11, "b")]).unwrap();
            assert_eq!(s.event_count("a").unwrap(), 4);
        }
        let s = Store::open(dir.path(), 3, 4).unwrap();
        let loaded = s.load().unwrap();
        let nums: Vec<(String, u64)> = loaded
            .generations
            .iter()
            .map(|g| (g.generation.project.clone(), g.generation.number))
            .collect();
        assert_eq!(
            nums,
            [("a", 3), ("a", 4), ("a", 5), ("b", 1)].map(|(p, n)| (p.to_owned(), n))
        );
        let a5 = &loaded.generations[2];
        assert_eq!(a5.generation.converged_at_ms, 99);
        assert_eq!(a5.generation.rollout, "paused: web-1 unhealthy");
        assert_eq!(a5.generation.author, "Ada");
        assert_eq!(a5.specs, generation("a", 5).specs);
        let ids: Vec<u64> = loaded.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, [7, 8, 9, 10, 11]);
    }

    /// Another program's SQLite file, a file of garbage and a newer
    /// schema are refused by name and left untouched.
    #[test]
    fn foreign_files_are_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("CREATE TABLE photos (id INTEGER);")
                .unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let e = Store::open(dir.path(), 3, 3).unwrap_err();
        assert!(matches!(e, StoreError::Foreign { .. }), "{e}");
        assert!(e.to_string().contains("not a Procurator"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), before);

        std::fs::write(
            &path,
            b"this is not a database at all, just some text. ".repeat(200),
        )
        .unwrap();
        let e = Store::open(dir.path(), 3, 3).unwrap_err();
        assert!(matches!(e, StoreError::Open { .. }), "{e}");
        let chain = commands::report::error_chain(&e);
        assert!(chain.contains("not a database"), "{chain}");

        std::fs::remove_file(&path).unwrap();
        drop(Store::open(dir.path(), 3, 3).unwrap());
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 9).unwrap();
        }
        let e = Store::open(dir.path(), 3, 3).unwrap_err();
        assert!(e.to_string().contains("schema version 9"), "{e}");
    }
}
