//! Reading VmSpec files for the tools that send specs (`pcr-test
//! publish-state`, `pcr-worker-test create-vm`): one spec object or a JSON
//! array of them per file, refused with the file's name and what was wrong.

use std::path::{Path, PathBuf};

use commands::types::VmSpec;

/// Why a spec file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecFileError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not JSON", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{}: expected a VmSpec object or a JSON array of VmSpec objects, found {found}",
        path.display()
    )]
    Shape { path: PathBuf, found: &'static str },
    #[error("{}: {which} is not a VM spec", path.display())]
    Spec {
        path: PathBuf,
        which: String,
        source: serde_json::Error,
    },
}

/// What a JSON value is, in words, for [`SpecFileError::Shape`].
fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Reads the specs in `path` ("-" for stdin): one object or an array of
/// objects. An empty array gives an empty list: the caller decides whether
/// "no VMs" is what the user meant.
pub fn read_spec_file(path: &Path) -> Result<Vec<VmSpec>, SpecFileError> {
    let read = |source| SpecFileError::Read {
        path: path.to_owned(),
        source,
    };
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(read)?
    } else {
        std::fs::read_to_string(path).map_err(read)?
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| SpecFileError::Json {
            path: path.to_owned(),
            source,
        })?;
    let spec = |v: serde_json::Value, which: String| {
        serde_json::from_value::<VmSpec>(v).map_err(|source| SpecFileError::Spec {
            path: path.to_owned(),
            which,
            source,
        })
    };
    match value {
        serde_json::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                if v.is_object() {
                    spec(v, format!("item {i}"))
                } else {
                    Err(SpecFileError::Shape {
                        path: path.to_owned(),
                        found: match kind(&v) {
                            "null" => "an array holding null",
                            "a boolean" => "an array holding a boolean",
                            "a number" => "an array holding a number",
                            "a string" => "an array holding a string",
                            _ => "an array holding an array",
                        },
                    })
                }
            })
            .collect(),
        v @ serde_json::Value::Object(_) => Ok(vec![spec(v, "the object".to_owned())?]),
        v => Err(SpecFileError::Shape {
            path: path.to_owned(),
            found: kind(&v),
        }),
    }
}
