//! Nix binary cache keys (`nix-store --generate-binary-cache-key` formats)
//! and ed25519 narinfo signatures (`Sig: <name>:<base64>`).

use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Errors reading keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key is not `<name>:<base64>`")]
    Format,
    #[error("key name {0:?} is empty or contains ':' or whitespace")]
    BadName(String),
    #[error("key has {0} bytes, expected {1}")]
    Length(usize, usize),
    #[error("secret key's public half does not match its seed")]
    Mismatch,
    #[error("invalid ed25519 public key")]
    BadPublic,
    #[error("reading {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Splits `NAME:base64(N bytes)` into the name and exactly `N` bytes.
fn split<const N: usize>(text: &str) -> Result<(String, [u8; N]), KeyError> {
    let (name, b64) = text.trim().split_once(':').ok_or(KeyError::Format)?;
    check_name(name)?;
    let bytes = B64.decode(b64).map_err(|_| KeyError::Format)?;
    let bytes = bytes
        .try_into()
        .map_err(|v: Vec<u8>| KeyError::Length(v.len(), N))?;
    Ok((name.to_owned(), bytes))
}

fn check_name(name: &str) -> Result<(), KeyError> {
    if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
        return Err(KeyError::BadName(name.to_owned()));
    }
    Ok(())
}

/// A cache's secret key. `SigningKey`'s `Debug` prints only its public half.
#[derive(Debug)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    /// Parses `NAME:base64(32-byte seed ‖ 32-byte public key)`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split::<64>(text)?;
        let key = SigningKey::from_keypair_bytes(&bytes).map_err(|_| KeyError::Mismatch)?;
        Ok(Self { name, key })
    }

    /// Reads a secret key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// A new key from the OS's random source.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(|source| KeyError::Io {
                path: "/dev/urandom".into(),
                source,
            })?;
        Ok(Self {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The key name (the part before `:`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Nix's secret key file content.
    pub fn to_nix_string(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.to_keypair_bytes()))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// `NAME:base64(signature)` over `fingerprint`.
    pub fn sign(&self, fingerprint: &str) -> String {
        let sig = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, B64.encode(sig.to_bytes()))
    }
}

/// A cache's public key, as listed in `trusted-public-keys`.
#[derive(Clone, Debug)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses `NAME:base64(32 bytes)`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split::<32>(text)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::BadPublic)?;
        Ok(Self { name, key })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Nix's public key file content.
    pub fn to_nix_string(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }

    /// True when `sig` (`NAME:base64`) is this key's valid signature of `fingerprint`.
    pub fn verify(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, b64)) = sig.split_once(':') else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = B64.decode(b64) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        self.key.verify(fingerprint.as_bytes(), &sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated with `nix-store --generate-binary-cache-key test-1 sk pk` (nix 2.8).
    const SK: &str = "test-1:F0ebp23ETUY/XYACyf+zWHAtXfApIZzYOlP6+T3MFfR6MmOaTKY5rMSoRrQKMA7JJreCKhthDU7KRFIBSmP64Q==";
    const PK: &str = "test-1:ejJjmkymOazEqEa0CjAOySa3giobYQ1OykRSAUpj+uE=";

    #[test]
    fn parses_nix_keys_and_roundtrips() {
        let sk = SecretKey::parse(SK).unwrap();
        assert_eq!(sk.name(), "test-1");
        assert_eq!(sk.to_nix_string(), SK);
        assert_eq!(sk.public().to_nix_string(), PK);
        let pk = PublicKey::parse(PK).unwrap();
        let fp = "1;/nix/store/2ic3dwh5ndmb1mn7svwjmkbxj6x0i1q4-b;sha256:0lb0i1gl1hdlq6zwkmyxsgb6xsk8x3drg0f2aqcb4y8nw8zapr3i;248;";
        let sig = sk.sign(fp);
        assert!(sig.starts_with("test-1:"));
        assert!(pk.verify(fp, &sig));
        assert!(!pk.verify(&fp.replace("248", "249"), &sig));
        assert!(!pk.verify(fp, &sig.replace("test-1", "other")));
    }

    #[test]
    fn signature_equals_the_one_nix_store_sign_made() {
        // `nix store sign --key-file` (nix 2.8) on this path with this key produced
        // the Sig below; ed25519 is deterministic, so ours must be byte-identical.
        let sk = SecretKey::parse(
            "test-cache-1:Gj/Z1UukWtopU8i5Vzd1pf+sb2az+VkM58fe+ALdF4GDtLDNpEQIVYisWmygdthQJpsYGzXCwWr06HfNsWIkoQ==",
        )
        .unwrap();
        let fp = "1;/nix/store/qjjal519c2vikg2sv5wi0wlmrrnd1lpz-a;\
sha256:0vqyqkib19dx78hvym63rgsf11x34b98qq7447qfc2cw63fhxnqf;100960;\
/nix/store/d46wqgjmp0lgx1xyfcj79rh1an31qrwh-b,/nix/store/jr0mzab5cpr98kzx2fpp0d5kdkhwzm2r-c";
        assert_eq!(
            sk.sign(fp),
            "test-cache-1:QXRiTO5AFuqc6zHYzLmQHq2QL0q3AfGEQBKUsnSWdEHxPeRI6q6JYX4LbKPlmf2eVkhSUeD9+wTEWxu53iD5Ag=="
        );
    }

    #[test]
    fn generated_keys_sign_and_verify() {
        let sk = SecretKey::generate("cache.example-1").unwrap();
        let again = SecretKey::parse(&sk.to_nix_string()).unwrap();
        assert!(again.public().verify("x", &sk.sign("x")));
        assert!(SecretKey::generate("bad:name").is_err());
    }

    #[test]
    fn rejects_malformed_keys() {
        assert!(matches!(SecretKey::parse("nocolon"), Err(KeyError::Format)));
        assert!(matches!(
            SecretKey::parse(PK),
            Err(KeyError::Length(32, 64))
        ));
        assert!(matches!(
            PublicKey::parse(SK),
            Err(KeyError::Length(64, 32))
        ));
    }
}
