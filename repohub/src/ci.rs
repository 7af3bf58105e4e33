//! Client for ci_service's HTTP API (push hook, job list, job detail, log).
//!
//! Every call has a short timeout: a slow or dead ci_service must make its
//! panel say "unavailable", never hang a page.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

const API_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum CiError {
    #[error("ci_service is not configured")]
    NotConfigured,
    #[error("bad ci_service URL {0:?}")]
    Url(String),
    #[error("request to ci_service failed: {0}")]
    Request(String),
    #[error("ci_service timed out")]
    Timeout,
    #[error("ci_service answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("unexpected answer from ci_service: {0}")]
    Decode(String),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Job {
    pub id: i64,
    pub repo: String,
    #[serde(rename = "ref")]
    pub ref_name: String,
    pub commit: String,
    pub state: String,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    #[serde(default)]
    pub generation: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub vm_specs: Vec<serde_json::Value>,
}

impl Job {
    pub fn short_commit(&self) -> &str {
        &self.commit[..10.min(self.commit.len())]
    }

    /// "1.2 s" from started to finished (or "running"/"—").
    pub fn duration(&self) -> String {
        match (self.started_at_ms, self.finished_at_ms) {
            (Some(s), Some(f)) => format!("{:.1} s", (f - s).max(0) as f64 / 1000.0),
            (Some(_), None) => "running".into(),
            _ => "—".into(),
        }
    }

    pub fn branch(&self) -> &str {
        self.ref_name
            .strip_prefix("refs/heads/")
            .unwrap_or(&self.ref_name)
    }
}

#[derive(Debug, Serialize)]
pub struct PushNotice<'a> {
    pub repo: &'a str,
    #[serde(rename = "ref")]
    pub ref_name: &'a str,
    pub old: &'a str,
    pub new: &'a str,
}

#[derive(Clone)]
pub struct CiClient {
    base: Option<String>,
    secret: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl CiClient {
    pub fn new(base: Option<String>, secret: Option<String>) -> Result<Self, CiError> {
        let base = base.map(|b| b.trim_end_matches('/').to_owned());
        if let Some(b) = base
            .as_ref()
            .filter(|b| !b.starts_with("http://") || b.parse::<http::Uri>().is_err())
        {
            return Err(CiError::Url(b.clone()));
        }
        Ok(Self {
            base,
            secret,
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    pub fn configured(&self) -> bool {
        self.base.is_some()
    }

    fn url(&self, path: &str) -> Result<http::Uri, CiError> {
        let base = self.base.as_ref().ok_or(CiError::NotConfigured)?;
        format!("{base}{path}")
            .parse()
            .map_err(|_| CiError::Url(format!("{base}{path}")))
    }

    async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, CiError> {
        match tokio::time::timeout(API_TIMEOUT, self.http.request(req)).await {
            Err(_) => Err(CiError::Timeout),
            Ok(Err(e)) => Err(CiError::Request(commands::report::error_chain(&e))),
            Ok(Ok(r)) => Ok(r),
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<T, CiError> {
        let resp = self.send(req).await?;
        let status = resp.status();
        let body = tokio::time::timeout(API_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| CiError::Timeout)?
            .map_err(|e| CiError::Request(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(CiError::Status {
                status: status.as_u16(),
                body: text,
            });
        }
        serde_json::from_slice(&body).map_err(|e| CiError::Decode(e.to_string()))
    }

    /// `POST /hooks/push`; returns the job id ci_service assigned.
    pub async fn notify_push(&self, n: &PushNotice<'_>) -> Result<Option<i64>, CiError> {
        let body = serde_json::to_vec(n).map_err(|e| CiError::Decode(e.to_string()))?;
        let mut req = http::Request::post(self.url("/hooks/push")?)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(s) = &self.secret {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {s}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CiError::Request(e.to_string()))?;
        let v: serde_json::Value = self.json(req).await?;
        Ok(v.get("job_id").and_then(serde_json::Value::as_i64))
    }

    fn get(&self, path: &str) -> Result<http::Request<Full<Bytes>>, CiError> {
        http::Request::get(self.url(path)?)
            .body(Full::default())
            .map_err(|e| CiError::Request(e.to_string()))
    }

    pub async fn jobs(&self, repo: &str, limit: usize) -> Result<Vec<Job>, CiError> {
        let q: String =
            percent_encoding::utf8_percent_encode(repo, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        self.json(self.get(&format!("/jobs?repo={q}&limit={limit}"))?)
            .await
    }

    pub async fn job(&self, id: i64) -> Result<Job, CiError> {
        self.json(self.get(&format!("/jobs/{id}"))?).await
    }

    /// The log response, streamed as it comes (`follow` keeps it open while
    /// the job runs). Only the connect and headers are bounded by a timeout.
    pub async fn log(
        &self,
        id: i64,
        follow: bool,
    ) -> Result<hyper::Response<hyper::body::Incoming>, CiError> {
        let path = if follow {
            format!("/jobs/{id}/log?follow=1")
        } else {
            format!("/jobs/{id}/log")
        };
        let resp = self.send(self.get(&path)?).await?;
        if !resp.status().is_success() {
            return Err(CiError::Status {
                status: resp.status().as_u16(),
                body: String::new(),
            });
        }
        Ok(resp)
    }
}
