//! Credentials: argon2id password hashes, random session/CSRF/access tokens,
//! cookie parsing and HTTP basic auth for git.
//!
//! Secrets we issue (session cookies, access tokens) are 32 random bytes;
//! only their SHA-256 is stored, so a leaked database does not log anyone in.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("operating system randomness unavailable: {0}")]
    Random(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")]
    PasswordLength,
}

pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 1024;

/// A password repohub accepts for a new account.
pub fn check_password(password: &str) -> Result<(), AuthError> {
    if password.chars().count() < MIN_PASSWORD || password.len() > MAX_PASSWORD {
        return Err(AuthError::PasswordLength);
    }
    Ok(())
}

/// Argon2id cost. The default is OWASP's recommendation (19 MiB, 2 passes,
/// 1 lane); tests lower it to keep the suite fast, production must not.
#[derive(Debug, Clone, Copy)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl KdfParams {
    /// Cheap parameters for tests only (still argon2id, still salted).
    pub fn insecure_for_tests() -> Self {
        Self {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    fn argon2(&self) -> Result<Argon2<'static>, AuthError> {
        let p = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| AuthError::Params(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, p))
    }
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(b)
}

/// A fresh unguessable token, URL-safe base64 (43 chars).
pub fn new_token() -> Result<String, AuthError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

pub fn sha256_hex(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hash_password(params: &KdfParams, password: &str) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(params
        .argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| AuthError::Hash(e.to_string()))?
        .to_string())
}

/// Verifies with the parameters stored in the hash itself, so raising the
/// default cost later keeps old hashes valid.
pub fn verify_password(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A password hash nobody's password matches, verified when the user does
/// not exist so the response time does not reveal which names exist.
pub fn dummy_hash(params: &KdfParams) -> String {
    hash_password(params, "repohub-dummy-password").unwrap_or_default()
}

/// The CSRF token of forms posted with the credential `bound_to` (the
/// session token of a logged-in browser, the pre-session cookie of an
/// anonymous one). It is derived, not stored: a token only matches the
/// session it was made for, and it does not reveal the session token.
pub fn csrf_token(bound_to: &str) -> String {
    let d = Sha256::digest(format!("repohub-csrf\0{bound_to}").as_bytes());
    URL_SAFE_NO_PAD.encode(d)
}

/// The value of cookie `name` in a `Cookie:` header, if present.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// (user, password) from `Authorization: Basic …`.
pub fn basic_auth(headers: &http::HeaderMap) -> Option<(String, String)> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let raw = STANDARD.decode(b64.trim()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// Tokens we issue are exactly 43 URL-safe base64 chars; anything else is
/// refused before touching the database.
pub fn looks_like_token(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_roundtrip_and_mismatch() {
        let p = KdfParams::insecure_for_tests();
        let h = hash_password(&p, "s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("s3creT", &h));
        assert!(!verify_password("s3cret", "not a hash"));
    }

    #[test]
    fn default_params_are_strong() {
        let d = KdfParams::default();
        assert!(d.memory_kib >= 19 * 1024 && d.iterations >= 2);
    }

    #[test]
    fn tokens_are_distinct_and_shaped() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(looks_like_token(&a));
        assert!(!looks_like_token("short"));
    }

    #[test]
    fn csrf_tokens_are_bound_to_their_credential() {
        let s = new_token().unwrap();
        assert_eq!(csrf_token(&s), csrf_token(&s));
        assert_ne!(csrf_token(&s), csrf_token(&new_token().unwrap()));
        assert!(looks_like_token(&csrf_token(&s)) && csrf_token(&s) != s);
    }

    #[test]
    fn cookie_and_basic_parsing() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=1; rh_session=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, "rh_session"), Some("xyz"));
        assert_eq!(cookie(&h, "nope"), None);
        h.insert(
            http::header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode("ann:tok:en"))
                .parse()
                .unwrap(),
        );
        assert_eq!(basic_auth(&h), Some(("ann".into(), "tok:en".into())));
    }
}
