//! Per-project quotas from the operator's file (`--quotas FILE`, TOML, or
//! JSON when the name ends in `.json`), reloaded on SIGHUP:
//!
//! ```toml
//! # Every project not listed below (omit it to refuse unlisted projects).
//! [default]
//! cpu = 16
//! memoryMb = 16384
//! vms = 20
//!
//! [projects.team-a]
//! cpu = 8
//! memoryMb = 4096
//! vms = 4
//! ```
//!
//! Without a file every project is known and unlimited: the single-tenant
//! setup that existed before projects keeps working unchanged. With a file,
//! a project it does not list gets `[default]`, or is refused as unknown
//! when the file has no `[default]`: an operator who writes a quota file
//! chooses whether strangers may publish at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use commands::model::Limits;
use commands::types::ProjectName;
use serde::Deserialize;

/// Why a quota file was refused (the old quotas stay in force on a reload).
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("cannot read quota file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("quota file {}: {why}", path.display())]
    Parse { path: PathBuf, why: String },
}

/// The quotas in force.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QuotaConfig {
    /// False without a file: every project known, nothing limited.
    enforced: bool,
    /// For projects not listed; `None` refuses them.
    default: Option<Limits>,
    projects: BTreeMap<ProjectName, Limits>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LimitsFile {
    cpu: u32,
    memory_mb: u64,
    vms: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaFile {
    default: Option<LimitsFile>,
    #[serde(default)]
    projects: BTreeMap<ProjectName, LimitsFile>,
}

impl From<LimitsFile> for Limits {
    fn from(l: LimitsFile) -> Limits {
        Limits {
            cpu: l.cpu,
            memory_mb: l.memory_mb,
            vms: l.vms,
        }
    }
}

/// What "no limit" reads as in views (`pcr projects` prints it as `-`).
pub const UNLIMITED: Limits = Limits {
    cpu: u32::MAX,
    memory_mb: u64::MAX,
    vms: u32::MAX,
};

impl QuotaConfig {
    /// No file: every project known and unlimited.
    pub fn unlimited() -> Self {
        QuotaConfig::default()
    }

    /// Enforced quotas: `default` for unlisted projects (`None` refuses them).
    pub fn new(default: Option<Limits>, projects: BTreeMap<ProjectName, Limits>) -> Self {
        QuotaConfig {
            enforced: true,
            default,
            projects,
        }
    }

    /// Parses a quota file's text; JSON when `path` ends in `.json`, TOML otherwise.
    pub fn parse(text: &str, path: &Path) -> Result<Self, QuotaError> {
        let parsed: Result<QuotaFile, String> = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            toml::from_str(text).map_err(|e| e.to_string())
        };
        let file = parsed.map_err(|why| QuotaError::Parse {
            path: path.to_owned(),
            why,
        })?;
        Ok(QuotaConfig::new(
            file.default.map(Limits::from),
            file.projects
                .into_iter()
                .map(|(p, l)| (p, l.into()))
                .collect(),
        ))
    }

    /// Reads and parses a quota file.
    pub fn load(path: &Path) -> Result<Self, QuotaError> {
        let text = std::fs::read_to_string(path).map_err(|source| QuotaError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// The limits of `project`: `Ok(None)` when unlimited, `Err` with the
    /// reason when the project is unknown.
    pub fn limits(&self, project: &ProjectName) -> Result<Option<Limits>, String> {
        if !self.enforced {
            return Ok(None);
        }
        match self.projects.get(project).copied().or(self.default) {
            Some(l) => Ok(Some(l)),
            None => Err(format!(
                "unknown project {project}: the control plane's quota file does not list it and has no [default]"
            )),
        }
    }

    /// The projects the file names, in order.
    pub fn listed(&self) -> impl Iterator<Item = &ProjectName> {
        self.projects.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cpu: u32, memory_mb: u64, vms: u32) -> Limits {
        Limits {
            cpu,
            memory_mb,
            vms,
        }
    }

    #[test]
    fn toml_and_json_read_the_same() {
        let toml = "[default]\ncpu = 2\nmemoryMb = 512\nvms = 3\n[projects.team-a]\ncpu = 8\nmemoryMb = 4096\nvms = 4\n";
        let json = r#"{"default":{"cpu":2,"memoryMb":512,"vms":3},"projects":{"team-a":{"cpu":8,"memoryMb":4096,"vms":4}}}"#;
        let a = QuotaConfig::parse(toml, Path::new("q.toml")).unwrap();
        let b = QuotaConfig::parse(json, Path::new("q.json")).unwrap();
        assert_eq!(a, b);
        let team_a = "team-a".parse().unwrap();
        assert_eq!(a.limits(&team_a).unwrap(), Some(limits(8, 4096, 4)));
        let other = "other".parse().unwrap();
        assert_eq!(a.limits(&other).unwrap(), Some(limits(2, 512, 3)));
    }

    #[test]
    fn without_default_unlisted_projects_are_unknown() {
        let q = QuotaConfig::parse(
            "[projects.a]\ncpu = 1\nmemoryMb = 1\nvms = 1\n",
            Path::new("q.toml"),
        )
        .unwrap();
        let err = q.limits(&"b".parse().unwrap()).unwrap_err();
        assert!(err.starts_with("unknown project b"), "{err}");
        assert_eq!(
            QuotaConfig::unlimited().limits(&"b".parse().unwrap()),
            Ok(None)
        );
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        for (text, want) in [
            (
                "[projects.Bad_Name]\ncpu = 1\nmemoryMb = 1\nvms = 1\n",
                "project",
            ),
            ("[projects.a]\ncpu = 1\nmemoryMB = 1\nvms = 1\n", "memoryMB"),
            ("[projects.a]\ncpu = -1\nmemoryMb = 1\nvms = 1\n", "cpu"),
        ] {
            let err = QuotaConfig::parse(text, Path::new("q.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err:?} should name {want:?}");
        }
    }
}
