//! The SQLite index of what the cache holds: one row per stored path (the
//! exact signed narinfo we serve, hashes, sizes, references, upload time),
//! one row per uploaded NAR file (its measured hashes), and named pins.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

/// Errors from the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("sqlite")]
    Sqlite(#[from] rusqlite::Error),
}

/// One stored path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRow {
    pub hash_part: String,
    /// `<hash>-<name>` (no store dir).
    pub store_path: String,
    /// `nar/<file>`.
    pub url: String,
    pub compression: String,
    pub file_hash: String,
    pub file_size: u64,
    pub nar_hash: String,
    pub nar_size: u64,
    /// Base names, space-separated as in the narinfo.
    pub refs: String,
    /// The signed narinfo text, byte for byte what GET serves.
    pub narinfo: String,
    pub uploaded_at: i64,
}

impl PathRow {
    /// Base names of the references.
    pub fn references(&self) -> impl Iterator<Item = &str> {
        self.refs.split(' ').filter(|r| !r.is_empty())
    }
}

/// Hashes measured while a NAR file was received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarRow {
    /// File name under `nar/`.
    pub file: String,
    pub file_hash: String,
    pub file_size: u64,
    pub nar_hash: String,
    pub nar_size: u64,
    pub uploaded_at: i64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS paths (
    hash_part   TEXT PRIMARY KEY,
    store_path  TEXT NOT NULL UNIQUE,
    url         TEXT NOT NULL,
    compression TEXT NOT NULL,
    file_hash   TEXT NOT NULL,
    file_size   INTEGER NOT NULL,
    nar_hash    TEXT NOT NULL,
    nar_size    INTEGER NOT NULL,
    refs        TEXT NOT NULL,
    narinfo     TEXT NOT NULL,
    uploaded_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS paths_url ON paths(url);
CREATE TABLE IF NOT EXISTS nars (
    file        TEXT PRIMARY KEY,
    file_hash   TEXT NOT NULL,
    file_size   INTEGER NOT NULL,
    nar_hash    TEXT NOT NULL,
    nar_size    INTEGER NOT NULL,
    uploaded_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pins (
    name        TEXT NOT NULL,
    store_path  TEXT NOT NULL,
    pinned_at   INTEGER NOT NULL,
    PRIMARY KEY (name, store_path)
);
";

/// Opens (creating if needed) the index at `path`. WAL mode lets the CLI's
/// `gc`/`pin`/`verify` run beside a serving process; writers serialise on
/// SQLite's lock (`BEGIN IMMEDIATE`), which is what makes the upload's
/// reference check and gc's deletions mutually exclusive.
pub fn open(path: &Path) -> Result<Connection, IndexError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(60))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode: a power loss may drop the last commits but never
    // corrupts the index. Files are fsynced before the rows that name them,
    // so a lost row only leaves an unindexed narinfo whose NAR exists
    // (verify reports it, gc removes it), never a narinfo without its NAR.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    // Columns later versions added: who uploaded a path, whose a pin is
    // (NULL: the all-projects token, or an index older than these).
    for (table, column) in [("paths", "uploaded_by"), ("pins", "owner")] {
        let has: bool = conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
            params![table, column],
            |r| r.get(0),
        )?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))?;
        }
    }
    Ok(conn)
}

/// Records which project's token uploaded a path (`None`: all projects).
pub fn set_uploader(
    conn: &Connection,
    hash_part: &str,
    project: Option<&str>,
) -> Result<(), IndexError> {
    conn.execute(
        "UPDATE paths SET uploaded_by = ?2 WHERE hash_part = ?1",
        params![hash_part, project],
    )?;
    Ok(())
}

/// The project whose token uploaded a path: `Some(None)` for the
/// all-projects token, `None` when the path is not stored.
pub fn uploader(conn: &Connection, hash_part: &str) -> Result<Option<Option<String>>, IndexError> {
    Ok(conn
        .query_row(
            "SELECT uploaded_by FROM paths WHERE hash_part = ?1",
            [hash_part],
            |r| r.get(0),
        )
        .optional()?)
}

/// The owner of pin `name`: `Some(None)` for an all-projects pin, `None`
/// when there is no such pin.
pub fn pin_owner(conn: &Connection, name: &str) -> Result<Option<Option<String>>, IndexError> {
    Ok(conn
        .query_row(
            "SELECT owner FROM pins WHERE name = ?1 LIMIT 1",
            [name],
            |r| r.get(0),
        )
        .optional()?)
}

fn path_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PathRow> {
    Ok(PathRow {
        hash_part: r.get(0)?,
        store_path: r.get(1)?,
        url: r.get(2)?,
        compression: r.get(3)?,
        file_hash: r.get(4)?,
        file_size: r.get::<_, i64>(5)? as u64,
        nar_hash: r.get(6)?,
        nar_size: r.get::<_, i64>(7)? as u64,
        refs: r.get(8)?,
        narinfo: r.get(9)?,
        uploaded_at: r.get(10)?,
    })
}

const PATH_COLS: &str = "hash_part, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, refs, narinfo, uploaded_at";

/// The row for a hash part.
pub fn get_path(conn: &Connection, hash_part: &str) -> Result<Option<PathRow>, IndexError> {
    let sql = format!("SELECT {PATH_COLS} FROM paths WHERE hash_part = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([hash_part], path_from_row)
        .optional()?)
}

/// Every stored path.
pub fn all_paths(conn: &Connection) -> Result<Vec<PathRow>, IndexError> {
    let sql = format!("SELECT {PATH_COLS} FROM paths ORDER BY store_path");
    let mut st = conn.prepare(&sql)?;
    let rows = st.query_map([], path_from_row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Inserts a path row.
pub fn insert_path(conn: &Connection, p: &PathRow) -> Result<(), IndexError> {
    conn.prepare_cached(&format!(
        "INSERT INTO paths ({PATH_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)"
    ))?
    .execute(params![
        p.hash_part,
        p.store_path,
        p.url,
        p.compression,
        p.file_hash,
        p.file_size as i64,
        p.nar_hash,
        p.nar_size as i64,
        p.refs,
        p.narinfo,
        p.uploaded_at
    ])?;
    Ok(())
}

/// Deletes a path row.
pub fn delete_path(conn: &Connection, hash_part: &str) -> Result<(), IndexError> {
    conn.execute("DELETE FROM paths WHERE hash_part = ?1", [hash_part])?;
    Ok(())
}

/// Number of stored paths.
pub fn count_paths(conn: &Connection) -> Result<u64, IndexError> {
    Ok(conn.query_row("SELECT count(*) FROM paths", [], |r| r.get::<_, i64>(0))? as u64)
}

/// True when some path row points at `url`.
pub fn url_in_use(conn: &Connection, url: &str) -> Result<bool, IndexError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM paths WHERE url = ?1 LIMIT 1")?
        .exists([url])?)
}

/// The measured hashes of a NAR file.
pub fn get_nar(conn: &Connection, file: &str) -> Result<Option<NarRow>, IndexError> {
    Ok(conn
        .prepare_cached(
            "SELECT file, file_hash, file_size, nar_hash, nar_size, uploaded_at FROM nars WHERE file = ?1",
        )?
        .query_row([file], |r| {
            Ok(NarRow {
                file: r.get(0)?,
                file_hash: r.get(1)?,
                file_size: r.get::<_, i64>(2)? as u64,
                nar_hash: r.get(3)?,
                nar_size: r.get::<_, i64>(4)? as u64,
                uploaded_at: r.get(5)?,
            })
        })
        .optional()?)
}

/// Records (or refreshes) a NAR file's measured hashes.
pub fn upsert_nar(conn: &Connection, n: &NarRow) -> Result<(), IndexError> {
    conn.prepare_cached(
        "INSERT INTO nars (file, file_hash, file_size, nar_hash, nar_size, uploaded_at) VALUES (?1,?2,?3,?4,?5,?6)
         ON CONFLICT(file) DO UPDATE SET file_hash=excluded.file_hash, file_size=excluded.file_size,
           nar_hash=excluded.nar_hash, nar_size=excluded.nar_size, uploaded_at=excluded.uploaded_at",
    )?
    .execute(params![n.file, n.file_hash, n.file_size as i64, n.nar_hash, n.nar_size as i64, n.uploaded_at])?;
    Ok(())
}

/// Forgets a NAR file.
pub fn delete_nar(conn: &Connection, file: &str) -> Result<(), IndexError> {
    conn.execute("DELETE FROM nars WHERE file = ?1", [file])?;
    Ok(())
}

/// Replaces the paths of pin `name`, owned by `owner` (a project, or
/// `None` for the all-projects token).
pub fn set_pin(
    conn: &Connection,
    name: &str,
    store_paths: &[String],
    owner: Option<&str>,
    now: i64,
) -> Result<(), IndexError> {
    conn.execute("DELETE FROM pins WHERE name = ?1", [name])?;
    let mut st = conn.prepare_cached(
        "INSERT OR IGNORE INTO pins (name, store_path, pinned_at, owner) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for p in store_paths {
        st.execute(params![name, p, now, owner])?;
    }
    Ok(())
}

/// Removes pin `name`; false when it did not exist.
pub fn delete_pin(conn: &Connection, name: &str) -> Result<bool, IndexError> {
    Ok(conn.execute("DELETE FROM pins WHERE name = ?1", [name])? > 0)
}

/// Every pin name with its owner (`None`: the all-projects token).
pub fn pin_names(conn: &Connection) -> Result<Vec<(String, Option<String>)>, IndexError> {
    let mut st = conn.prepare("SELECT DISTINCT name, owner FROM pins ORDER BY name")?;
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Bytes of the NAR files the index knows (what the cache holds on disk,
/// narinfos and logs aside).
pub fn nar_bytes(conn: &Connection) -> Result<u64, IndexError> {
    let n: i64 = conn.query_row("SELECT coalesce(sum(file_size), 0) FROM nars", [], |r| {
        r.get(0)
    })?;
    Ok(n.max(0) as u64)
}

/// All pins as (name, store path base name).
pub fn all_pins(conn: &Connection) -> Result<Vec<(String, String)>, IndexError> {
    let mut st = conn.prepare("SELECT name, store_path FROM pins ORDER BY name, store_path")?;
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
