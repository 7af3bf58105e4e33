//! ci_service's HTTP API, defined once: the push event git hooks send, the
//! job and its state and timings as `GET /jobs` answers them, and a typed
//! client (`CiClient`) for the callers (repohub, the `notify` hook). The
//! JSON field names are the wire; ci_service serves exactly these types.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::http::{HttpClient, HttpError};

/// What a post-receive hook sends for each updated ref
/// (`POST /hooks/push`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEvent {
    /// Where ci_service fetches from (a path or URL of the repository).
    pub repo: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub old: String,
    pub new: String,
    /// The repohub project this repository belongs to; absent for bare repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Set by repohub only when this repository is its project's deploy repository: that project's deploy ref.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_ref: Option<String>,
}

/// Why a push event was refused (the 400 answer's message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushEventError {
    #[error("repo must be set and ref must start with refs/")]
    RepoOrRef,
    #[error("old and new must be 40-hex commit ids")]
    CommitId,
    #[error("project: {0}")]
    Project(crate::types::SpecError),
    #[error("deploy_ref must start with refs/ and name a project")]
    DeployRef,
}

fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

impl PushEvent {
    /// Checks the fields ci_service relies on: a repository, a full ref
    /// name and two 40-hex commit ids.
    pub fn check(&self) -> Result<(), PushEventError> {
        if self.repo.trim().is_empty() || !self.git_ref.starts_with("refs/") {
            return Err(PushEventError::RepoOrRef);
        }
        if !is_sha(&self.old) || !is_sha(&self.new) {
            return Err(PushEventError::CommitId);
        }
        if let Some(p) = &self.project {
            p.parse::<crate::types::ProjectName>()
                .map_err(PushEventError::Project)?;
        }
        if let Some(r) = &self.deploy_ref
            && (!r.starts_with("refs/") || self.project.is_none())
        {
            return Err(PushEventError::DeployRef);
        }
        Ok(())
    }

    /// A push that deleted the ref (new is all zeros): nothing to build.
    pub fn deletes_ref(&self) -> bool {
        self.new.bytes().all(|c| c == b'0')
    }
}

/// The answer to a push: the queued job, or none with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushReply {
    #[serde(alias = "job_id")]
    pub job_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A job's state: queued → running → succeeded | built-not-deployed |
/// failed | superseded | cancelled (`DELETE /jobs/{id}`).
/// `built-not-deployed`: the push built and checked but may not change any
/// project's VMs (not a deploy repository, or not
/// its deploy ref); the job's `error` says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    #[serde(rename = "built-not-deployed")]
    BuiltNotDeployed,
    Failed,
    Superseded,
    Cancelled,
}

/// A state name that is none of the seven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job state {0:?}")]
pub struct UnknownJobState(pub String);

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::BuiltNotDeployed => "built-not-deployed",
            JobState::Failed => "failed",
            JobState::Superseded => "superseded",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Succeeded, built-not-deployed, failed, superseded and cancelled
    /// jobs never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded
                | JobState::BuiltNotDeployed
                | JobState::Failed
                | JobState::Superseded
                | JobState::Cancelled
        )
    }
}

impl FromStr for JobState {
    type Err = UnknownJobState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "built-not-deployed" => JobState::BuiltNotDeployed,
            "failed" => JobState::Failed,
            "superseded" => JobState::Superseded,
            "cancelled" => JobState::Cancelled,
            other => return Err(UnknownJobState(other.to_owned())),
        })
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long each phase of a job took, in ms; a phase the job did not reach
/// is absent (so `{}` for a job that never ran). A phase this build does
/// not know is ignored when read: it misreports nothing, and a newer
/// ci_service must not break an older reader's panel. camelCase on the
/// wire like every Procurator JSON (`buildMs`); the snake_case names of
/// older ci_service builds are still read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    /// From the push to the runner claiming the job.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "queue_ms")]
    pub queue_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "fetch_ms")]
    pub fetch_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "eval_ms")]
    pub eval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "build_ms")]
    pub build_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "upload_ms")]
    pub upload_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "publish_ms")]
    pub publish_ms: Option<u64>,
}

/// What `DELETE /jobs/{id}` answers: the job's state after the request
/// (`cancelled` for a job that was queued, `running` while a running job's
/// nix process is being stopped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelReply {
    pub id: i64,
    pub state: JobState,
}

/// A job as `GET /jobs` and `GET /jobs/{id}` show it: camelCase
/// (`createdAtMs`, `timings.buildMs`), reading the snake_case of older
/// ci_service builds too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: i64,
    pub repo: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The ref's previous commit (ci_service always sends it; defaulted so
    /// a reader does not depend on it).
    #[serde(default)]
    pub old: String,
    pub commit: String,
    pub state: JobState,
    #[serde(alias = "created_at_ms")]
    pub created_at_ms: i64,
    #[serde(alias = "started_at_ms")]
    pub started_at_ms: Option<i64>,
    #[serde(alias = "finished_at_ms")]
    pub finished_at_ms: Option<i64>,
    #[serde(default)]
    pub generation: Option<i64>,
    /// Why the job failed, or why a built-not-deployed job published nothing.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub timings: Timings,
    /// The project the push belongs to, when known (repohub's, or
    /// ci_service's --projects mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The specs a succeeded job built (VmSpec JSON, as evaluated); only in
    /// `GET /jobs/{id}`, and there only once the job succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "vm_specs")]
    pub vm_specs: Option<Vec<serde_json::Value>>,
}

impl Job {
    /// The first 10 characters of the commit id.
    pub fn short_commit(&self) -> &str {
        &self.commit[..10.min(self.commit.len())]
    }

    /// The branch name of a `refs/heads/` ref, else the ref itself.
    pub fn branch(&self) -> &str {
        self.git_ref
            .strip_prefix("refs/heads/")
            .unwrap_or(&self.git_ref)
    }

    /// "1.2 s" from started to finished, "running" while it runs, "—"
    /// before it starts.
    pub fn duration(&self) -> String {
        match (self.started_at_ms, self.finished_at_ms) {
            (Some(s), Some(f)) => format!("{:.1} s", (f - s).max(0) as f64 / 1000.0),
            (Some(_), None) => "running".into(),
            _ => "—".into(),
        }
    }

    /// The specs the job built (empty before it succeeded).
    pub fn specs(&self) -> &[serde_json::Value] {
        self.vm_specs.as_deref().unwrap_or_default()
    }
}

/// The body of every error answer: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// What a call to ci_service can end with.
#[derive(Debug, thiserror::Error)]
pub enum CiError {
    #[error("ci_service is not configured")]
    NotConfigured,
    #[error("bad ci_service URL {0:?}")]
    Url(String),
    /// The HTTP error already names the URL, so it is shown as it is.
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("ci_service answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("unexpected answer from ci_service")]
    Decode(#[source] serde_json::Error),
}

impl CiError {
    /// The HTTP status ci_service answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            CiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How many bytes of an error answer go into `CiError::Status`.
const ERROR_BODY_MAX: usize = 300;
/// Logs are bigger than any other answer; this bounds a buffered one.
const LOG_LIMIT: usize = 256 * 1024 * 1024;

/// A client of ci_service's API. Unconfigured (no base URL) is allowed and
/// answers every call with `NotConfigured`, so a caller can show "not
/// configured" instead of failing at start.
#[derive(Debug, Clone)]
pub struct CiClient {
    base: Option<String>,
    secret: Option<String>,
    /// A `reader` token of ci_service's `--api-token-file`, sent on reads.
    token: Option<String>,
    http: HttpClient,
}

impl CiClient {
    /// `base` is `http://host:port`; `secret` is sent as the push hook's
    /// bearer token. Every call is bounded by `timeout`.
    pub fn new(
        base: Option<String>,
        secret: Option<String>,
        timeout: Duration,
    ) -> Result<Self, CiError> {
        let base = base.map(|b| b.trim_end_matches('/').to_owned());
        if let Some(b) = base
            .as_ref()
            .filter(|b| !b.starts_with("http://") || b.parse::<Uri>().is_err())
        {
            return Err(CiError::Url(b.clone()));
        }
        Ok(CiClient {
            base,
            secret,
            token: None,
            http: HttpClient::tcp().with_timeout(timeout),
        })
    }

    /// Sends `token` (a `reader` token of ci_service's `--api-token-file`)
    /// as the bearer of every read: jobs, logs, specs.
    pub fn with_read_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    pub fn configured(&self) -> bool {
        self.base.is_some()
    }

    /// A request to `path`; a JSON `body` is what the push hook sends, so
    /// it carries the hook secret; a read carries the read token.
    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Request<Bytes>, CiError> {
        let base = self.base.as_ref().ok_or(CiError::NotConfigured)?;
        let url = format!("{base}{path}");
        let uri: Uri = url.parse().map_err(|_| CiError::Url(url.clone()))?;
        let mut req = Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
            if let Some(s) = &self.secret {
                req = req.header(header::AUTHORIZATION, crate::http::bearer(s));
            }
        } else if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, crate::http::bearer(t));
        }
        req.body(Bytes::from(body.unwrap_or_default()))
            .map_err(|_| CiError::Url(url))
    }

    /// Sends `req` and returns the body of a 2xx answer.
    async fn call(&self, req: Request<Bytes>) -> Result<Bytes, CiError> {
        let resp = self.http.send(req).await?;
        if !resp.status.is_success() {
            return Err(CiError::Status {
                status: resp.status.as_u16(),
                body: String::from_utf8_lossy(&resp.body[..resp.body.len().min(ERROR_BODY_MAX)])
                    .into_owned(),
            });
        }
        Ok(resp.body)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: Request<Bytes>,
    ) -> Result<T, CiError> {
        let body = self.call(req).await?;
        serde_json::from_slice(&body).map_err(CiError::Decode)
    }

    /// `POST /hooks/push`; returns ci_service's answer (the queued job, or
    /// none when the ref was deleted).
    pub async fn push(&self, event: &PushEvent) -> Result<PushReply, CiError> {
        let body = serde_json::to_vec(event).map_err(CiError::Decode)?;
        self.json(self.request(Method::POST, "/hooks/push", Some(body))?)
            .await
    }

    /// `GET /jobs?repo=&limit=`: the repository's jobs, newest first.
    pub async fn jobs(&self, repo: &str, limit: usize) -> Result<Vec<Job>, CiError> {
        let q = percent_encoding::utf8_percent_encode(repo, percent_encoding::NON_ALPHANUMERIC);
        self.json(self.request(Method::GET, &format!("/jobs?repo={q}&limit={limit}"), None)?)
            .await
    }

    /// `GET /jobs/{id}`, with `vm_specs` once the job succeeded.
    pub async fn job(&self, id: i64) -> Result<Job, CiError> {
        self.json(self.request(Method::GET, &format!("/jobs/{id}"), None)?)
            .await
    }

    /// `DELETE /jobs/{id}` (with the read API's token, which must be an
    /// `admin`'s): a queued job ends `cancelled` at once, a running one as
    /// soon as its nix process is gone. A finished job answers 409 with its
    /// state.
    pub async fn cancel(&self, id: i64) -> Result<CancelReply, CiError> {
        self.json(self.request(Method::DELETE, &format!("/jobs/{id}"), None)?)
            .await
    }

    /// `POST /jobs/{id}/rerun` (with the read API's token, which must be
    /// an `admin`'s): queues an ended job's push again; returns the new
    /// job's id. A job that has not ended answers 409.
    pub async fn rerun(&self, id: i64) -> Result<PushReply, CiError> {
        self.json(self.request(Method::POST, &format!("/jobs/{id}/rerun"), None)?)
            .await
    }

    /// `GET /jobs/{id}/log`: the log as it is now.
    pub async fn log(&self, id: i64) -> Result<Bytes, CiError> {
        let req = self.request(Method::GET, &format!("/jobs/{id}/log"), None)?;
        let resp = self
            .http
            .clone()
            .with_body_limit(LOG_LIMIT)
            .send(req)
            .await?;
        if !resp.status.is_success() {
            return Err(CiError::Status {
                status: resp.status.as_u16(),
                body: resp.body_text(ERROR_BODY_MAX),
            });
        }
        Ok(resp.body)
    }

    /// `GET /jobs/{id}/log[?follow=1]` with the body unread, to stream it
    /// on (with `follow`, until the job is final). Only the connection and
    /// the head are bounded by the timeout.
    pub async fn log_stream(
        &self,
        id: i64,
        follow: bool,
    ) -> Result<http::Response<Incoming>, CiError> {
        let path = if follow {
            format!("/jobs/{id}/log?follow=1")
        } else {
            format!("/jobs/{id}/log")
        };
        let resp = self
            .http
            .open(self.request(Method::GET, &path, None)?)
            .await?;
        if !resp.status().is_success() {
            return Err(CiError::Status {
                status: resp.status().as_u16(),
                body: String::new(),
            });
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_state_names_are_strict() {
        for s in [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::BuiltNotDeployed,
            JobState::Failed,
            JobState::Superseded,
            JobState::Cancelled,
        ] {
            assert_eq!(s.as_str().parse::<JobState>(), Ok(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(
            "exploded".parse::<JobState>(),
            Err(UnknownJobState("exploded".into()))
        );
        assert!(serde_json::from_str::<JobState>("\"exploded\"").is_err());
    }

    #[test]
    fn job_json_is_the_wire() {
        let mut job = Job {
            id: 3,
            repo: "/r.git".into(),
            git_ref: "refs/heads/main".into(),
            old: "0".repeat(40),
            commit: "a".repeat(40),
            state: JobState::Running,
            created_at_ms: 1,
            started_at_ms: Some(2),
            finished_at_ms: None,
            generation: None,
            error: None,
            timings: Timings {
                queue_ms: Some(1),
                ..Timings::default()
            },
            project: None,
            vm_specs: None,
        };
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["ref"], "refs/heads/main");
        assert_eq!(v["state"], "running");
        assert_eq!(v["timings"], serde_json::json!({ "queueMs": 1 }));
        assert_eq!(v["createdAtMs"], 1);
        assert_eq!(v["startedAtMs"], 2);
        assert!(v.get("finishedAtMs").is_some() && v.get("created_at_ms").is_none());
        assert!(v.get("vmSpecs").is_none(), "only the detail carries specs");
        assert_eq!(serde_json::from_value::<Job>(v).unwrap(), job);
        job.vm_specs = Some(vec![]);
        assert_eq!(
            serde_json::to_value(&job).unwrap()["vmSpecs"],
            serde_json::json!([])
        );
        // What an older ci_service answered (snake_case) still reads.
        let old = serde_json::json!({
            "id": 3, "repo": "/r.git", "ref": "refs/heads/main", "old": "0".repeat(40),
            "commit": "a".repeat(40), "state": "running", "created_at_ms": 1,
            "started_at_ms": 2, "finished_at_ms": null, "timings": {"queue_ms": 1},
            "vm_specs": []
        });
        assert_eq!(serde_json::from_value::<Job>(old).unwrap(), job);
        assert_eq!(job.branch(), "main");
        assert_eq!(job.short_commit(), "aaaaaaaaaa");
        assert_eq!(job.duration(), "running");
        assert_eq!(
            serde_json::from_str::<Timings>(r#"{"napMs":1,"evalMs":2}"#).unwrap(),
            Timings {
                eval_ms: Some(2),
                ..Timings::default()
            }
        );
        assert!(serde_json::from_str::<Timings>(r#"{"evalMs":"slow"}"#).is_err());
    }

    #[test]
    fn push_events_are_checked() {
        let ok = PushEvent {
            repo: "/r".into(),
            git_ref: "refs/heads/main".into(),
            old: "0".repeat(40),
            new: "a".repeat(40),
            project: None,
            deploy_ref: None,
        };
        assert_eq!(ok.check(), Ok(()));
        let deploy = PushEvent {
            project: Some("team-a".into()),
            deploy_ref: Some("refs/heads/main".into()),
            ..ok.clone()
        };
        assert_eq!(deploy.check(), Ok(()));
        let bad_project = PushEvent {
            project: Some("../etc".into()),
            ..ok.clone()
        };
        assert!(matches!(
            bad_project.check(),
            Err(PushEventError::Project(_))
        ));
        let orphan_ref = PushEvent {
            deploy_ref: Some("refs/heads/main".into()),
            ..ok.clone()
        };
        assert_eq!(orphan_ref.check(), Err(PushEventError::DeployRef));
        assert!(!ok.deletes_ref());
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            serde_json::json!({"repo": "/r", "ref": "refs/heads/main", "old": "0".repeat(40), "new": "a".repeat(40)})
        );
        let bad_ref = PushEvent {
            git_ref: "main".into(),
            ..ok.clone()
        };
        assert_eq!(bad_ref.check(), Err(PushEventError::RepoOrRef));
        let bad_sha = PushEvent {
            new: "xyz".into(),
            ..ok.clone()
        };
        assert_eq!(bad_sha.check(), Err(PushEventError::CommitId));
        let deleted = PushEvent {
            new: "0".repeat(40),
            ..ok
        };
        assert!(deleted.deletes_ref());
        assert_eq!(
            serde_json::to_value(PushReply {
                job_id: None,
                reason: Some("ref deleted".into())
            })
            .unwrap(),
            serde_json::json!({"jobId": null, "reason": "ref deleted"})
        );
        assert_eq!(
            serde_json::to_value(PushReply {
                job_id: Some(4),
                reason: None
            })
            .unwrap(),
            serde_json::json!({"jobId": 4})
        );
        assert_eq!(
            serde_json::from_str::<PushReply>(r#"{"job_id": 4}"#).unwrap(),
            PushReply {
                job_id: Some(4),
                reason: None
            }
        );
    }

    #[tokio::test]
    async fn unconfigured_and_unreachable_clients_say_so() {
        let none = CiClient::new(None, None, Duration::from_secs(1)).unwrap();
        assert!(!none.configured());
        assert!(matches!(none.job(1).await, Err(CiError::NotConfigured)));
        assert!(CiClient::new(Some("ftp://x".into()), None, Duration::from_secs(1)).is_err());
        let dead = CiClient::new(
            Some("http://127.0.0.1:1/".into()),
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(matches!(dead.jobs("/r", 1).await, Err(CiError::Http(_))));
    }
}
