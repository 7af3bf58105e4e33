//! Tokens and roles shared by every Cap'n Proto server and client: the
//! servers' token file (`<role>[:<worker-id>|<project>] <token>` per line), the
//! constant-time login check, the clients' token lookup (`--token-file`,
//! `PCR_TOKEN`, `PCR_TOKEN_FILE`) and the rule that a server without tokens
//! does not start unless told so with `--insecure-no-auth`, and then only
//! on loopback and with a loud warning.
//!
//! Tokens never appear in logs or error messages: errors name the file and
//! the line, never the text.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::common_capnp;

/// Environment variable holding a client's token.
pub const TOKEN_ENV: &str = "PCR_TOKEN";
/// Environment variable naming a file that holds a client's token.
pub const TOKEN_FILE_ENV: &str = "PCR_TOKEN_FILE";
/// Shorter tokens are refused when a token file is loaded: they can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longer tokens are refused at login before they are compared.
pub const MAX_TOKEN_LEN: usize = 1024;

/// A token held by a client: `Debug` and `Display` never show it, so a
/// config struct holding one can be logged safely.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The token itself, for the login call only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(none)"
        } else {
            "Secret(<redacted>)"
        })
    }
}

/// What a token lets its holder do; see `context/architecture.md`, "Trust model".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Ci,
    Worker,
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Ci => "ci",
            Role::Worker => "worker",
            Role::Reader => "reader",
        }
    }

    pub fn to_capnp(self) -> common_capnp::Role {
        match self {
            Role::Admin => common_capnp::Role::Admin,
            Role::Ci => common_capnp::Role::Ci,
            Role::Worker => common_capnp::Role::Worker,
            Role::Reader => common_capnp::Role::Reader,
        }
    }

    pub fn from_capnp(r: common_capnp::Role) -> Self {
        match r {
            common_capnp::Role::Admin => Role::Admin,
            common_capnp::Role::Ci => Role::Ci,
            common_capnp::Role::Worker => Role::Worker,
            common_capnp::Role::Reader => Role::Reader,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a successful login grants: a role, for `worker` the one worker id
/// it may act as, and for a `ci:<project>` token the one project it may
/// publish for (`ci` alone publishes for every project).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    pub worker_id: Option<String>,
    pub project: Option<crate::types::ProjectName>,
}

impl Grant {
    pub fn admin() -> Self {
        Grant {
            role: Role::Admin,
            worker_id: None,
            project: None,
        }
    }

    /// Whether this grant may publish for `project` (its role aside).
    pub fn covers_project(&self, project: &crate::types::ProjectName) -> bool {
        self.project.as_ref().is_none_or(|p| p == project)
    }
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.worker_id, &self.project) {
            (Some(id), _) => write!(f, "{}:{id}", self.role),
            (None, Some(p)) => write!(f, "{}:{p}", self.role),
            (None, None) => write!(f, "{}", self.role),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read token file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {}, line {line}: {why}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("token file {} holds no token", path.display())]
    Empty { path: PathBuf },
    #[error("{TOKEN_FILE_ENV} names a file that cannot be read ({})", path.display())]
    EnvFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{what} needs {flag}: without it every caller would be trusted; pass {flag}, or \
         --insecure-no-auth for development on a loopback address"
    )]
    NoTokenFile { what: String, flag: String },
    #[error("{flag} and --insecure-no-auth exclude each other")]
    TokenFileAndInsecure { flag: String },
    #[error(
        "refusing to serve {what} on non-loopback address {addr} without {flag}: anyone who can \
         reach it could use it; pass {flag} or listen on 127.0.0.1"
    )]
    OpenBind {
        what: String,
        addr: SocketAddr,
        flag: String,
    },
}

/// Why a login was refused (sent back to the client as permissionDenied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error(
        "no token was given; this server requires one (--token-file, {TOKEN_ENV} or {TOKEN_FILE_ENV})"
    )]
    Missing,
    #[error("the token is not valid for this server")]
    Invalid,
    #[error("too many refused logins from this address; the next attempt counts in {retry_secs}s")]
    TooManyRefused { retry_secs: u64 },
}

/// The tokens a server accepts. `Open` (no token file) takes any token as
/// admin and is only allowed on loopback (see [`check_bind`]).
#[derive(Clone)]
pub enum Authenticator {
    Open,
    Tokens(Vec<(Grant, Vec<u8>)>),
}

/// Shows how many tokens, never which.
impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authenticator::Open => f.write_str("Authenticator::Open"),
            Authenticator::Tokens(t) => write!(f, "Authenticator::Tokens({} tokens)", t.len()),
        }
    }
}

/// Compares without an early exit, so timing tells nothing about how much
/// of a guess matched. Lengths are public (tokens are long and random).
/// Every secret compare of the workspace (login tokens, upload tokens, hook
/// secrets, session ids) goes through this one.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    /// Parses a token file's text; `allowed` are the roles this server knows
    /// (a worker has no use for ci or worker tokens).
    pub fn parse(text: &str, path: &Path, allowed: &[Role]) -> Result<Self, AuthError> {
        let syntax = |line: usize, why: String| AuthError::Syntax {
            path: path.to_owned(),
            line,
            why,
        };
        let mut entries: Vec<(Grant, Vec<u8>)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(who), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(syntax(
                    line_no,
                    "expected `<role>[:<worker-id>|<project>] <token>`".into(),
                ));
            };
            let (role_s, worker_id) = match who.split_once(':') {
                Some((r, id)) => (r, Some(id)),
                None => (who, None),
            };
            let role = match role_s {
                "admin" => Role::Admin,
                "ci" => Role::Ci,
                "worker" => Role::Worker,
                "reader" => Role::Reader,
                other => {
                    return Err(syntax(
                        line_no,
                        format!(
                            "unknown role {other:?} (admin, ci, ci:<project>, worker:<id>, reader)"
                        ),
                    ));
                }
            };
            if !allowed.contains(&role) {
                let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
                return Err(syntax(
                    line_no,
                    format!(
                        "role {role} is not used by this server (it knows {})",
                        names.join(", ")
                    ),
                ));
            }
            let (worker_id, project) = match (role, worker_id) {
                (Role::Worker, Some(id)) if id.parse::<crate::types::WorkerId>().is_ok() => {
                    (Some(id.to_owned()), None)
                }
                (Role::Worker, Some(id)) => {
                    return Err(syntax(line_no, format!("{id:?} is not a valid worker id")));
                }
                (Role::Worker, None) => {
                    return Err(syntax(
                        line_no,
                        "a worker token is bound to an id: `worker:<id> <token>`".into(),
                    ));
                }
                // A CI token scoped to one project publishes for it only.
                (Role::Ci, Some(p)) => match p.parse::<crate::types::ProjectName>() {
                    Ok(p) => (None, Some(p)),
                    Err(e) => return Err(syntax(line_no, format!("ci:<project>: {e}"))),
                },
                (_, Some(_)) => {
                    return Err(syntax(
                        line_no,
                        format!("only worker and ci tokens take a suffix, not {role}"),
                    ));
                }
                (_, None) => (None, None),
            };
            if token.len() < MIN_TOKEN_LEN || token.len() > MAX_TOKEN_LEN {
                return Err(syntax(
                    line_no,
                    format!("a token must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters long"),
                ));
            }
            if entries.iter().any(|(_, t)| t == token.as_bytes()) {
                return Err(syntax(line_no, "the same token appears twice".into()));
            }
            entries.push((
                Grant {
                    role,
                    worker_id,
                    project,
                },
                token.as_bytes().to_vec(),
            ));
        }
        if entries.is_empty() {
            return Err(AuthError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Authenticator::Tokens(entries))
    }

    /// Reads and parses a token file.
    pub fn load(path: &Path, allowed: &[Role]) -> Result<Self, AuthError> {
        let text = read_private(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, allowed)
    }

    /// A server's authenticator from its flags: the tokens of `token_file`
    /// (the option named `flag`), or `Open` only when `insecure_no_auth`
    /// asks for it; neither is an error, as no token would mean every
    /// caller is admin. `what` names the server in the error.
    pub fn for_server(
        what: &str,
        flag: &str,
        token_file: Option<&Path>,
        insecure_no_auth: bool,
        allowed: &[Role],
    ) -> Result<Self, AuthError> {
        match (token_file, insecure_no_auth) {
            (Some(p), false) => Self::load(p, allowed),
            (None, true) => Ok(Authenticator::Open),
            (Some(_), true) => Err(AuthError::TokenFileAndInsecure {
                flag: flag.to_owned(),
            }),
            (None, false) => Err(AuthError::NoTokenFile {
                what: what.to_owned(),
                flag: flag.to_owned(),
            }),
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Authenticator::Open)
    }

    /// The grant of `token`. Every entry is compared (no early exit).
    pub fn login(&self, token: &str) -> Result<Grant, LoginError> {
        match self {
            Authenticator::Open => Ok(Grant::admin()),
            Authenticator::Tokens(entries) => {
                if token.is_empty() {
                    return Err(LoginError::Missing);
                }
                if token.len() > MAX_TOKEN_LEN {
                    return Err(LoginError::Invalid);
                }
                let mut found = None;
                for (grant, t) in entries {
                    if ct_eq(t, token.as_bytes()) && found.is_none() {
                        found = Some(grant.clone());
                    }
                }
                found.ok_or(LoginError::Invalid)
            }
        }
    }
}

/// A secret file's text without surrounding whitespace (a cache upload
/// token, a push-hook secret): the whole file is the secret. Warns when the
/// file is readable by group or others, like a token file; an empty file is
/// an error, as an empty secret would let anyone in.
pub fn read_secret_file(path: &Path) -> Result<String, AuthError> {
    let text = read_private(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(AuthError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(secret.to_owned())
}

/// The one way a file holding secrets is read (token files, secret files,
/// client token files): its text, with a warning when others can read it.
fn read_private(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    warn_if_shared(path);
    Ok(text)
}

/// Tokens readable by other users are not secret: say so (not fatal, as
/// systemd credentials and test files have their own modes).
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        let mode = format!("{:o}", m.permissions().mode() & 0o777);
        tracing::warn!(file = %path.display(), %mode, "token file is readable by group or others; chmod 600 it");
    }
}

/// Refuses a non-loopback `addr` unless the server has tokens (`secured`):
/// an open server is for development on one host only.
/// `flag` names the option that secures it (`--token-file`, ...).
pub fn check_bind(
    what: &str,
    addr: SocketAddr,
    secured: bool,
    flag: &str,
) -> Result<(), AuthError> {
    if secured || addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(AuthError::OpenBind {
            what: what.to_owned(),
            addr,
            flag: flag.to_owned(),
        })
    }
}

/// Where a server that checks nothing (`--insecure-no-auth`) may listen:
/// loopback only; there it starts, with a warning in its log that every
/// local user can do anything with it. `secured` servers pass untouched.
pub fn check_insecure_bind(
    what: &str,
    addr: SocketAddr,
    secured: bool,
    flag: &str,
) -> Result<(), AuthError> {
    check_bind(what, addr, secured, flag)?;
    if !secured {
        tracing::warn!(
            %addr,
            "INSECURE: {what} runs with --insecure-no-auth: every local user and process can \
             call it with full rights; give it {flag} outside development"
        );
    }
    Ok(())
}

/// The first token-looking word of a client token file: the first line that
/// is neither blank nor a comment; when it has two words (`<role> <token>`,
/// a line copied from the server's file) the last one.
fn token_from_text(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_owned)
}

/// A client's token: from `file` when given, else `PCR_TOKEN`, else the file
/// `PCR_TOKEN_FILE` names, else empty (what a server without tokens takes).
pub fn client_token(file: Option<&Path>) -> Result<String, AuthError> {
    if let Some(p) = file {
        let text = read_private(p).map_err(|source| AuthError::Read {
            path: p.to_owned(),
            source,
        })?;
        return token_from_text(&text).ok_or_else(|| AuthError::Empty { path: p.to_owned() });
    }
    if let Ok(t) = std::env::var(TOKEN_ENV)
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_owned());
    }
    if let Some(p) = std::env::var_os(TOKEN_FILE_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(p);
        let text = read_private(&path).map_err(|source| AuthError::EnvFile {
            path: path.clone(),
            source,
        })?;
        return token_from_text(&text).ok_or(AuthError::Empty { path });
    }
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Role] = &[Role::Admin, Role::Ci, Role::Worker, Role::Reader];

    fn parse(text: &str) -> Result<Authenticator, AuthError> {
        Authenticator::parse(text, Path::new("tokens"), ALL)
    }

    #[test]
    fn token_file_grants_each_role() {
        let a = parse(
            "# cluster tokens\n\nadmin aaaaaaaaaaaaaaaaaaaa\nci cccccccccccccccccccc\n\
             worker:w-1 wwwwwwwwwwwwwwwwwwww\nreader rrrrrrrrrrrrrrrrrrrr\n\
             ci:team-a pppppppppppppppppppp\n",
        )
        .unwrap();
        assert_eq!(a.login("aaaaaaaaaaaaaaaaaaaa").unwrap(), Grant::admin());
        let ci = a.login("cccccccccccccccccccc").unwrap();
        assert_eq!((ci.role, ci.project.as_ref()), (Role::Ci, None));
        let team_a: crate::types::ProjectName = "team-a".parse().unwrap();
        assert!(ci.covers_project(&team_a), "ci publishes for every project");
        let scoped = a.login("pppppppppppppppppppp").unwrap();
        assert_eq!(
            (scoped.role, scoped.project.as_ref()),
            (Role::Ci, Some(&team_a))
        );
        assert!(scoped.covers_project(&team_a));
        assert!(!scoped.covers_project(&"team-b".parse().unwrap()));
        assert_eq!(scoped.to_string(), "ci:team-a");
        let w = a.login("wwwwwwwwwwwwwwwwwwww").unwrap();
        assert_eq!(
            (w.role, w.worker_id.as_deref()),
            (Role::Worker, Some("w-1"))
        );
        assert_eq!(a.login("rrrrrrrrrrrrrrrrrrrr").unwrap().role, Role::Reader);
        assert_eq!(a.login("").unwrap_err(), LoginError::Missing);
        assert_eq!(
            a.login("aaaaaaaaaaaaaaaaaaab").unwrap_err(),
            LoginError::Invalid
        );
        assert_eq!(
            a.login("aaaaaaaaaaaaaaaaaaa").unwrap_err(),
            LoginError::Invalid
        );
        assert_eq!(a.login(&"a".repeat(5000)).unwrap_err(), LoginError::Invalid);
    }

    #[test]
    fn open_authenticator_takes_anything_as_admin() {
        assert_eq!(Authenticator::Open.login("").unwrap(), Grant::admin());
        assert_eq!(
            Authenticator::Open.login("whatever").unwrap(),
            Grant::admin()
        );
    }

    #[test]
    fn bad_token_files_name_the_line_but_never_the_token() {
        let cases = [
            ("admin short\n", "line 1", "16 to 1024"),
            ("boss aaaaaaaaaaaaaaaaaaaa\n", "line 1", "unknown role"),
            (
                "\nworker aaaaaaaaaaaaaaaaaaaa\n",
                "line 2",
                "bound to an id",
            ),
            (
                "worker:../x aaaaaaaaaaaaaaaaaaaa\n",
                "line 1",
                "not a valid worker id",
            ),
            (
                "admin:w-1 aaaaaaaaaaaaaaaaaaaa\n",
                "line 1",
                "only worker and ci tokens",
            ),
            (
                "ci:Team_A aaaaaaaaaaaaaaaaaaaa\n",
                "line 1",
                "is not a project name",
            ),
            ("admin aaaaaaaaaaaaaaaaaaaa extra\n", "line 1", "expected"),
            (
                "admin aaaaaaaaaaaaaaaaaaaa\nci aaaaaaaaaaaaaaaaaaaa\n",
                "line 2",
                "twice",
            ),
        ];
        for (text, line, why) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(line) && e.contains(why), "{text:?}: {e}");
            assert!(!e.contains("aaaaaaaaaaaaaaaaaaaa"), "token leaked: {e}");
        }
        assert!(matches!(parse("# nothing\n"), Err(AuthError::Empty { .. })));
        let e = Authenticator::parse(
            "ci cccccccccccccccccccc\n",
            Path::new("t"),
            &[Role::Admin, Role::Reader],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not used by this server"), "{e}");
    }

    #[test]
    fn a_server_without_tokens_needs_to_be_told() {
        let dir = std::env::temp_dir().join(format!("pcr-auth-server-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tokens");
        std::fs::write(&p, "admin aaaaaaaaaaaaaaaaaaaa\n").unwrap();
        let a = Authenticator::for_server("the worker", "--token-file", Some(&p), false, ALL);
        assert!(!a.unwrap().is_open());
        let open = Authenticator::for_server("the worker", "--token-file", None, true, ALL);
        assert!(open.unwrap().is_open());
        let e = Authenticator::for_server("the worker", "--token-file", None, false, ALL)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("the worker needs --token-file") && e.contains("--insecure-no-auth"),
            "{e}"
        );
        let e = Authenticator::for_server("the worker", "--token-file", Some(&p), true, ALL)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exclude each other"), "{e}");
        let any: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert!(check_insecure_bind("the worker", any, false, "--token-file").is_err());
        assert!(check_insecure_bind("the worker", lo, false, "--token-file").is_ok());
        assert!(check_insecure_bind("the worker", any, true, "--token-file").is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn open_servers_stay_on_loopback() {
        let lo: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let lo6: SocketAddr = "[::1]:7000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        assert!(check_bind("the control plane", lo, false, "--token-file").is_ok());
        assert!(check_bind("the control plane", lo6, false, "--token-file").is_ok());
        assert!(check_bind("the control plane", any, true, "--token-file").is_ok());
        let e = check_bind("the control plane", any, false, "--token-file")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0.0.0.0:7000") && e.contains("--token-file"),
            "{e}"
        );
    }

    #[test]
    fn client_token_file_takes_the_first_token() {
        assert_eq!(
            token_from_text("# c\n\n  tok-1  \nother\n").as_deref(),
            Some("tok-1")
        );
        assert_eq!(token_from_text("reader tok-2\n").as_deref(), Some("tok-2"));
        assert_eq!(token_from_text("\n# only comments\n"), None);
        let dir = tempfile_dir();
        let p = dir.join("tok");
        std::fs::write(&p, "tok-3\n").unwrap();
        assert_eq!(client_token(Some(&p)).unwrap(), "tok-3");
        let e = client_token(Some(&dir.join("missing")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read token file"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn secret_files_are_trimmed_and_never_empty() {
        // Its own directory: the token test removes tempfile_dir() when done.
        let dir = std::env::temp_dir().join(format!("pcr-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("hook");
        std::fs::write(&p, "  s3cret-value \n").unwrap();
        assert_eq!(read_secret_file(&p).unwrap(), "s3cret-value");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(read_secret_file(&p), Err(AuthError::Empty { .. })));
        let e = read_secret_file(&dir.join("missing")).unwrap_err();
        assert!(matches!(e, AuthError::Read { .. }), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("pcr-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2hunter2hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(s.expose(), "hunter2hunter2hunter2");
    }

    #[test]
    fn constant_time_compare_is_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }
}
