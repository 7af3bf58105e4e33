//! `repohub admin …`: account administration run by the operator on the
//! host, straight on the database (no server needed). This is how the first
//! admin exists while signup is closed. Passwords come from a file or stdin,
//! never from argv, where every local user could read them.

use std::path::Path;

use crate::auth::{self, AuthError, KdfParams};
use crate::db::{Db, DbError, User};
use crate::names;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("preparing data directory {0}")]
    DataDir(std::path::PathBuf, #[source] std::io::Error),
    #[error("the database")]
    Db(#[from] DbError),
    #[error("user name {0:?}")]
    Name(String, #[source] names::NameError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("reading the password from {0}")]
    Password(std::path::PathBuf, #[source] std::io::Error),
    #[error("no user named {0:?}")]
    NoSuchUser(String),
}

/// The database of the repohub whose data directory is `data_dir`.
pub fn open_db(data_dir: &Path) -> Result<Db, AdminError> {
    std::fs::create_dir_all(data_dir).map_err(|e| AdminError::DataDir(data_dir.to_owned(), e))?;
    Ok(Db::open(&data_dir.join("repohub.sqlite"))?)
}

/// What a new account may do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rights {
    pub admin: bool,
    pub may_create_projects: bool,
}

/// Creates an account with `password` and `rights`.
pub fn create_user(
    db: &Db,
    kdf: &KdfParams,
    name: &str,
    password: &str,
    rights: Rights,
) -> Result<User, AdminError> {
    names::validate_name(name).map_err(|e| AdminError::Name(name.to_owned(), e))?;
    auth::check_password(password)?;
    let hash = auth::hash_password(kdf, password)?;
    Ok(db.create_user_with(name, &hash, rights.admin, rights.may_create_projects)?)
}

/// Changes an existing account's rights (`None` leaves one as it is).
pub fn set_rights(
    db: &Db,
    name: &str,
    admin: Option<bool>,
    may_create_projects: Option<bool>,
) -> Result<(), AdminError> {
    if db.set_rights(name, admin, may_create_projects)? {
        Ok(())
    } else {
        Err(AdminError::NoSuchUser(name.to_owned()))
    }
}

/// The password in `text` (a file's or stdin's content): its first line,
/// without the line ending.
pub fn password_from(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}
