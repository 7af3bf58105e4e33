//! Deploy rights: which push may publish a generation, and for which
//! project. Only a project's deploy repository, on its deploy ref, changes
//! that project's VMs; every other push is built and checked but ends
//! `built-not-deployed` with the reason.
//!
//! Where the mapping comes from, in order:
//! 1. ci_service's own `--projects FILE` (TOML, for bare repositories):
//!    ```toml
//!    [[deploy]]
//!    repo = "/srv/git/team-a.git"   # as the push hook names it
//!    project = "team-a"
//!    ref = "refs/heads/main"
//!    ```
//!    A repository the file lists is mapped by the file only, whatever the
//!    push event claims: the operator of ci_service hands out deploy rights,
//!    and nothing that reaches the push endpoint can widen them.
//! 2. The push event's `project` and `deploy_ref`, which repohub sets for
//!    its repositories (`deploy_ref` only on a project's deploy repository).
//! 3. Neither, and no `--projects` file: the single-project setup from
//!    before projects, where every repository deploys the project `default`
//!    on `--deploy-ref`. With a `--projects` file, an unmapped repository
//!    deploys nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use commands::types::{DEFAULT_PROJECT, ProjectName};
use serde::Deserialize;

/// Why a `--projects` file was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("cannot read the projects file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("projects file {}: {why}", path.display())]
    Parse { path: PathBuf, why: String },
}

/// One project's deploy repository and ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployTarget {
    pub project: ProjectName,
    pub deploy_ref: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    repo: String,
    project: ProjectName,
    #[serde(rename = "ref")]
    deploy_ref: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    deploy: Vec<Entry>,
}

/// The deploy rights ci_service applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployRights {
    /// `None` without a `--projects` file (the single-project setup).
    by_repo: Option<BTreeMap<String, DeployTarget>>,
    /// The deploy ref of the `default` project in the single-project setup.
    legacy_ref: String,
}

/// What a built push may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Publish as the next generation of this project.
    Publish(ProjectName),
    /// Publish nothing, for this reason (one sentence, for the job log).
    NotDeployed(String),
}

impl DeployRights {
    /// No `--projects` file: every repository deploys `default` on `deploy_ref`.
    pub fn single_project(deploy_ref: impl Into<String>) -> Self {
        DeployRights {
            by_repo: None,
            legacy_ref: deploy_ref.into(),
        }
    }

    /// Parses a `--projects` file's text.
    pub fn parse(text: &str, path: &Path, legacy_ref: &str) -> Result<Self, DeployError> {
        let bad = |why: String| DeployError::Parse {
            path: path.to_owned(),
            why,
        };
        let file: File = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut by_repo = BTreeMap::new();
        for e in file.deploy {
            if !e.deploy_ref.starts_with("refs/") {
                return Err(bad(format!(
                    "project {}: ref {:?} must be a full ref name (refs/heads/...)",
                    e.project, e.deploy_ref
                )));
            }
            let target = DeployTarget {
                project: e.project,
                deploy_ref: e.deploy_ref,
            };
            if let Some(prev) = by_repo.insert(e.repo.clone(), target) {
                return Err(bad(format!(
                    "repository {} is listed twice (projects {} and another)",
                    e.repo, prev.project
                )));
            }
        }
        Ok(DeployRights {
            by_repo: Some(by_repo),
            legacy_ref: legacy_ref.to_owned(),
        })
    }

    /// Reads a `--projects` file.
    pub fn load(path: &Path, legacy_ref: &str) -> Result<Self, DeployError> {
        let text = std::fs::read_to_string(path).map_err(|source| DeployError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, legacy_ref)
    }

    /// The project a push to `repo` belongs to, for display and logs
    /// (`claimed` is what the push event named).
    pub fn project_of(&self, repo: &str, claimed: Option<&str>) -> Option<String> {
        match self.by_repo.as_ref().and_then(|m| m.get(repo)) {
            Some(t) => Some(t.project.to_string()),
            None => claimed
                .map(str::to_owned)
                .or_else(|| self.by_repo.is_none().then(|| DEFAULT_PROJECT.to_owned())),
        }
    }

    /// Whether a push of `git_ref` to `repo` publishes, and for which
    /// project. `claimed` is the push event's (project, deploy ref).
    pub fn decide(
        &self,
        repo: &str,
        git_ref: &str,
        claimed_project: Option<&str>,
        claimed_deploy_ref: Option<&str>,
    ) -> Decision {
        let on_ref = |project: ProjectName, deploy_ref: &str, source: &str| {
            if git_ref == deploy_ref {
                Decision::Publish(project)
            } else {
                Decision::NotDeployed(format!(
                    "{git_ref} is not the deploy ref of project {project} ({deploy_ref}, {source}); nothing published"
                ))
            }
        };
        if let Some(t) = self.by_repo.as_ref().and_then(|m| m.get(repo)) {
            return on_ref(t.project.clone(), &t.deploy_ref, "from --projects");
        }
        match (claimed_project, claimed_deploy_ref) {
            (Some(p), Some(r)) => match p.parse::<ProjectName>() {
                Ok(p) => on_ref(p, r, "from repohub"),
                Err(e) => Decision::NotDeployed(format!("the push named a bad project: {e}")),
            },
            (Some(p), None) => Decision::NotDeployed(format!(
                "{repo} belongs to project {p} but is not its deploy repository; nothing published"
            )),
            (None, _) if self.by_repo.is_none() => on_ref(
                ProjectName::default(),
                &self.legacy_ref,
                "the single-project --deploy-ref",
            ),
            (None, _) => Decision::NotDeployed(format!(
                "{repo} is not a project's deploy repository (not in --projects, and no project named by the push); nothing published"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "[[deploy]]\nrepo = \"/git/a.git\"\nproject = \"team-a\"\nref = \"refs/heads/main\"\n\n[[deploy]]\nrepo = \"/git/b.git\"\nproject = \"team-b\"\nref = \"refs/heads/prod\"\n";

    fn rights() -> DeployRights {
        DeployRights::parse(FILE, Path::new("projects.toml"), "refs/heads/main").unwrap()
    }

    fn publish(p: &str) -> Decision {
        Decision::Publish(p.parse().unwrap())
    }

    #[test]
    fn only_the_deploy_repository_on_its_ref_publishes() {
        let r = rights();
        assert_eq!(
            r.decide("/git/a.git", "refs/heads/main", None, None),
            publish("team-a")
        );
        assert_eq!(
            r.decide("/git/b.git", "refs/heads/prod", None, None),
            publish("team-b")
        );
        let Decision::NotDeployed(why) = r.decide("/git/b.git", "refs/heads/main", None, None)
        else {
            panic!("b's main is not its deploy ref")
        };
        assert_eq!(
            why,
            "refs/heads/main is not the deploy ref of project team-b (refs/heads/prod, from --projects); nothing published"
        );
        let Decision::NotDeployed(why) =
            r.decide("/git/stranger.git", "refs/heads/main", None, None)
        else {
            panic!("a stranger's repository deploys nothing")
        };
        assert!(
            why.starts_with("/git/stranger.git is not a project's deploy repository"),
            "{why}"
        );
    }

    /// The file wins over what a push claims: a push event naming project
    /// team-b for team-a's repository still deploys team-a only.
    #[test]
    fn the_file_wins_over_the_push_event() {
        let r = rights();
        assert_eq!(
            r.decide(
                "/git/a.git",
                "refs/heads/main",
                Some("team-b"),
                Some("refs/heads/main")
            ),
            publish("team-a")
        );
        assert_eq!(
            r.project_of("/git/a.git", Some("team-b")).as_deref(),
            Some("team-a")
        );
    }

    #[test]
    fn repohub_events_decide_for_unlisted_repositories() {
        let r = rights();
        assert_eq!(
            r.decide(
                "/hub/c.git",
                "refs/heads/main",
                Some("team-c"),
                Some("refs/heads/main")
            ),
            publish("team-c")
        );
        let Decision::NotDeployed(why) =
            r.decide("/hub/c2.git", "refs/heads/main", Some("team-c"), None)
        else {
            panic!("not the deploy repository")
        };
        assert!(
            why.contains("belongs to project team-c but is not its deploy repository"),
            "{why}"
        );
    }

    #[test]
    fn without_a_file_everything_deploys_default_on_the_deploy_ref() {
        let r = DeployRights::single_project("refs/heads/main");
        assert_eq!(
            r.decide("/any.git", "refs/heads/main", None, None),
            publish("default")
        );
        assert!(matches!(
            r.decide("/any.git", "refs/heads/dev", None, None),
            Decision::NotDeployed(_)
        ));
        assert_eq!(r.project_of("/any.git", None).as_deref(), Some("default"));
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        for (text, want) in [
            (
                "[[deploy]]\nrepo = \"/a\"\nproject = \"A\"\nref = \"refs/heads/main\"\n",
                "project",
            ),
            (
                "[[deploy]]\nrepo = \"/a\"\nproject = \"a\"\nref = \"main\"\n",
                "full ref name",
            ),
            (
                "[[deploy]]\nrepo = \"/a\"\nproject = \"a\"\nref = \"refs/heads/main\"\n[[deploy]]\nrepo = \"/a\"\nproject = \"b\"\nref = \"refs/heads/main\"\n",
                "listed twice",
            ),
            (
                "[[deploy]]\nrepo = \"/a\"\nproject = \"a\"\nbranch = \"x\"\n",
                "branch",
            ),
        ] {
            let err = DeployRights::parse(text, Path::new("p.toml"), "refs/heads/main")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err:?} should name {want:?}");
        }
    }
}
