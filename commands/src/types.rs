//! Validated domain types that cross the wire: VM specs and typed ids.
//!
//! Everything that enters the system (Nix's JSON, a Cap'n Proto reader, a
//! CLI argument) is parsed into these types at the edge, so code behind the
//! edge never re-validates and never sees a malformed name or store path.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a value was refused; the message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl SpecError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SpecError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Upper bounds that keep a hostile spec from exhausting the worker.
pub const MAX_CPU: u32 = 256;
pub const MAX_MEMORY_MB: u64 = 4 * 1024 * 1024;
pub const MAX_CMDLINE_LEN: usize = 4096;
pub const MAX_DOMAINS: usize = 256;
pub const MAX_LABELS: usize = 64;
/// The longest `healthCheck.consoleLine`, in characters.
pub const MAX_HEALTH_LINE_CHARS: usize = 256;
/// The longest `healthCheck.deadlineMs`: one hour.
pub const MAX_HEALTH_DEADLINE_MS: u64 = 3_600_000;
/// The most replicas an update policy may replace at once (nix/lib's bound
/// on replicas).
pub const MAX_PARALLEL: u32 = 1000;
/// The longest `update.minHealthyMs`: one hour.
pub const MAX_MIN_HEALTHY_MS: u64 = 3_600_000;
const STORE_DIR: &str = "/nix/store/";
const NIX32_ALPHABET: &str = "0123456789abcdfghijklmnpqrsvwxyz";

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

macro_rules! string_newtype {
    ($(#[$m:meta])* $name:ident, $validate:expr, $what:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = SpecError;
            fn try_from(s: String) -> Result<Self, SpecError> {
                let check: fn(&str) -> Result<(), String> = $validate;
                check(&s).map_err(|reason| SpecError::invalid($what, format!("{s:?} {reason}")))?;
                Ok($name(s))
            }
        }

        impl FromStr for $name {
            type Err = SpecError;
            fn from_str(s: &str) -> Result<Self, SpecError> {
                Self::try_from(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// A VM's name within a generation: a DNS label, so it can be a hostname.
    VmName,
    |s| if is_dns_label(s) { Ok(()) } else {
        Err("is not a DNS label (1-63 chars of a-z, 0-9, '-', not starting or ending with '-')".into())
    },
    "name"
);

string_newtype!(
    /// A project's name: the tenant a generation and its VMs belong to
    /// (repohub's project slug). 1-63 characters of a-z, 0-9 and '-', not
    /// starting with '-', so it can be part of a path and a token role.
    ProjectName,
    |s| {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if ok { Ok(()) } else {
            Err("is not a project name (1-63 chars of a-z, 0-9, '-', starting with a letter or digit)".into())
        }
    },
    "project"
);

/// The project of a setup that names none: what a single-project cluster
/// (and every spec, status or token without a project) belongs to.
pub const DEFAULT_PROJECT: &str = "default";

impl Default for ProjectName {
    fn default() -> Self {
        ProjectName(DEFAULT_PROJECT.to_owned())
    }
}

/// A VM's identity across projects: `web-0` of project `a` and `web-0` of
/// project `b` are different VMs. Orders by project, then name: the order
/// the scheduler breaks ties in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VmKey {
    pub project: ProjectName,
    pub name: VmName,
}

impl VmKey {
    pub fn new(project: ProjectName, name: VmName) -> Self {
        VmKey { project, name }
    }
}

/// `project/name`, the qualified name people read.
impl fmt::Display for VmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.project, self.name)
    }
}

string_newtype!(
    /// A worker's id: what it registers as and what assignments are keyed by.
    WorkerId,
    |s| {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && s.as_bytes()[0].is_ascii_alphanumeric();
        if ok { Ok(()) } else {
            Err("is not a worker id (1-63 chars of A-Z, a-z, 0-9, '-', '_', '.', starting alphanumeric)".into())
        }
    },
    "worker id"
);

string_newtype!(
    /// The id a worker gives a VM it creates: a UUID (v7, so ids sort by
    /// creation time), lowercase hyphenated.
    VmId,
    |s| {
        let b = s.as_bytes();
        let ok = b.len() == 36
            && b.iter().enumerate().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => *c == b'-',
                _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
            });
        if ok { Ok(()) } else { Err("is not a VM id (a lowercase hyphenated UUID)".into()) }
    },
    "vm id"
);

string_newtype!(
    /// An absolute path inside the Nix store: `/nix/store/<32 nix32>-<name>`,
    /// optionally followed by a relative path inside it (a kernel file in a
    /// kernel package). Never contains `..` or empty components.
    StorePath,
    validate_store_path,
    "store path"
);

/// Whether `name` is a valid name part of a store path (what follows
/// `<hash>-`): 1 to 211 characters of `[A-Za-z0-9+-._?=]`, no leading dot.
pub fn is_store_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 211
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c))
}

fn validate_store_path(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix(STORE_DIR)
        .ok_or("is not under /nix/store/")?;
    let mut parts = rest.split('/');
    let base = parts.next().unwrap_or_default();
    let (hash, name) = base
        .split_at_checked(32)
        .ok_or("has no 32-character hash part")?;
    if !hash.chars().all(|c| NIX32_ALPHABET.contains(c)) {
        return Err("has a hash part that is not Nix base32".into());
    }
    let name = name
        .strip_prefix('-')
        .ok_or("lacks the '-' after the hash part")?;
    if !is_store_name(name) {
        return Err("has an invalid name part".into());
    }
    for p in parts {
        if p.is_empty() || p == "." || p == ".." {
            return Err("has an empty, '.' or '..' component".into());
        }
    }
    Ok(())
}

impl StorePath {
    /// The top-level store path this path lies in (`/nix/store/<hash>-<name>`),
    /// i.e. what `nix copy` must fetch.
    pub fn store_root(&self) -> &str {
        let end = self.0[STORE_DIR.len()..]
            .find('/')
            .map_or(self.0.len(), |i| STORE_DIR.len() + i);
        &self.0[..end]
    }

    /// The 32-character hash part, the key of a narinfo.
    pub fn hash_part(&self) -> &str {
        &self.0[STORE_DIR.len()..STORE_DIR.len() + 32]
    }
}

impl VmId {
    /// A fresh, time-ordered id.
    pub fn new_v7() -> Self {
        VmId(uuid::Uuid::now_v7().hyphenated().to_string())
    }
}

/// What one VM boots and needs: the contract between Nix, CI, the control
/// plane and the worker. Constructed only through validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "VmSpecFields", into = "VmSpecFields")]
pub struct VmSpec {
    /// `None` as Nix writes a spec; the control plane sets the publishing
    /// project on every spec it accepts, so what a worker gets has one.
    project: Option<ProjectName>,
    name: VmName,
    toplevel: StorePath,
    kernel_path: StorePath,
    initrd_path: Option<StorePath>,
    disk_image_path: Option<StorePath>,
    cmdline: String,
    cpu: u32,
    memory_mb: u64,
    network_allowed_domains: Vec<String>,
    content_hash: String,
    labels: BTreeMap<String, String>,
    health_check: Option<HealthCheck>,
    update: Option<UpdatePolicy>,
}

/// How a new generation replaces the replicas of one VM group (see
/// `UpdatePolicy` in common.capnp). Like the health check, not part of the
/// content hash but part of the canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdatePolicy {
    pub group: String,
    pub max_parallel: u32,
    pub min_healthy_ms: u64,
    pub auto_revert: bool,
}

impl UpdatePolicy {
    /// The bounds nix/lib checks at evaluation, again at every edge: a
    /// policy that replaces nothing at a time would never finish, and an
    /// absurd wait would park a rollout for days.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !is_dns_label(&self.group) {
            return Err(SpecError::invalid(
                "update.group",
                format!("{:?} is not a DNS label", self.group),
            ));
        }
        if self.max_parallel == 0 || self.max_parallel > MAX_PARALLEL {
            return Err(SpecError::invalid(
                "update.maxParallel",
                format!("must be 1..={MAX_PARALLEL}, got {}", self.max_parallel),
            ));
        }
        if self.min_healthy_ms > MAX_MIN_HEALTHY_MS {
            return Err(SpecError::invalid(
                "update.minHealthyMs",
                format!(
                    "must be 0..={MAX_MIN_HEALTHY_MS} (one hour), got {}",
                    self.min_healthy_ms
                ),
            ));
        }
        Ok(())
    }
}

/// How the worker tells that a VM it started is healthy: a console line
/// that contains `console_line`, seen within `deadline_ms` of boot. Not part
/// of the content hash (it does not change what boots), but part of the
/// spec's canonical JSON, so changing it is a new intent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    pub console_line: String,
    pub deadline_ms: u64,
}

impl HealthCheck {
    /// Checks the bounds a hostile spec could abuse: an empty line (every
    /// line would match), one with control characters (it could never be
    /// one console line), or a deadline beyond an hour.
    pub fn validate(&self) -> Result<(), SpecError> {
        let n = self.console_line.chars().count();
        if n == 0 || n > MAX_HEALTH_LINE_CHARS {
            return Err(SpecError::invalid(
                "healthCheck.consoleLine",
                format!("must be 1..={MAX_HEALTH_LINE_CHARS} characters, got {n}"),
            ));
        }
        if self.console_line.chars().any(char::is_control) {
            return Err(SpecError::invalid(
                "healthCheck.consoleLine",
                "must be printable (no control characters)",
            ));
        }
        if self.deadline_ms == 0 || self.deadline_ms > MAX_HEALTH_DEADLINE_MS {
            return Err(SpecError::invalid(
                "healthCheck.deadlineMs",
                format!(
                    "must be 1..={MAX_HEALTH_DEADLINE_MS}, got {}",
                    self.deadline_ms
                ),
            ));
        }
        Ok(())
    }
}

/// Unvalidated fields, for building a spec in code (tests, conversions);
/// also the JSON shape Nix writes, before validation. Unknown fields are
/// refused so that a typo in a Nix module is an error, not a silently
/// ignored knob.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmSpecFields {
    /// Empty as Nix writes it (the control plane sets it on publish).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    pub name: String,
    pub toplevel: String,
    pub kernel_path: String,
    #[serde(default)]
    pub initrd_path: String,
    #[serde(default)]
    pub disk_image_path: String,
    #[serde(default)]
    pub cmdline: String,
    pub cpu: u32,
    pub memory_mb: u64,
    #[serde(default)]
    pub network_allowed_domains: Vec<String>,
    pub content_hash: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Absent = no check; omitted from JSON when absent, so the intent
    /// hash of a spec without one is what it was before checks existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Absent = replace at once; omitted from JSON when absent, for the
    /// same reason as `health_check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdatePolicy>,
}

fn optional_store_path(field: &str, s: String) -> Result<Option<StorePath>, SpecError> {
    if s.is_empty() {
        return Ok(None);
    }
    StorePath::try_from(s)
        .map(Some)
        .map_err(|e| rename_field(e, field))
}

fn rename_field(e: SpecError, field: &str) -> SpecError {
    match e {
        SpecError::Invalid { reason, .. } => SpecError::invalid(field, reason),
    }
}

fn is_domain(d: &str) -> bool {
    let d = d.strip_prefix("*.").unwrap_or(d);
    d.len() <= 253
        && d.split('.').count() >= 1
        && d.split('.').all(|l| {
            let l = l.to_ascii_lowercase();
            is_dns_label(&l)
        })
}

impl VmStatus {
    /// The VM's identity across projects.
    pub fn key(&self) -> VmKey {
        VmKey::new(self.project.clone(), self.name.clone())
    }
}

impl VmSpec {
    /// Validates every field; the error names the first one that is wrong.
    pub fn new(f: VmSpecFields) -> Result<Self, SpecError> {
        let project = if f.project.is_empty() {
            None
        } else {
            Some(ProjectName::try_from(f.project)?)
        };
        let name = VmName::try_from(f.name)?;
        if f.toplevel.is_empty() {
            return Err(SpecError::invalid("toplevel", "is empty"));
        }
        let toplevel = StorePath::try_from(f.toplevel).map_err(|e| rename_field(e, "toplevel"))?;
        if f.kernel_path.is_empty() {
            return Err(SpecError::invalid("kernelPath", "is empty"));
        }
        let kernel_path =
            StorePath::try_from(f.kernel_path).map_err(|e| rename_field(e, "kernelPath"))?;
        let initrd_path = optional_store_path("initrdPath", f.initrd_path)?;
        let disk_image_path = optional_store_path("diskImagePath", f.disk_image_path)?;
        if f.cmdline.len() > MAX_CMDLINE_LEN || f.cmdline.contains('\0') {
            return Err(SpecError::invalid(
                "cmdline",
                format!("must be at most {MAX_CMDLINE_LEN} bytes without NUL"),
            ));
        }
        if f.cpu == 0 || f.cpu > MAX_CPU {
            return Err(SpecError::invalid(
                "cpu",
                format!("must be 1..={MAX_CPU}, got {}", f.cpu),
            ));
        }
        if f.memory_mb == 0 || f.memory_mb > MAX_MEMORY_MB {
            return Err(SpecError::invalid(
                "memoryMb",
                format!("must be 1..={MAX_MEMORY_MB}, got {}", f.memory_mb),
            ));
        }
        if f.network_allowed_domains.len() > MAX_DOMAINS {
            return Err(SpecError::invalid(
                "networkAllowedDomains",
                format!("has more than {MAX_DOMAINS} entries"),
            ));
        }
        if let Some(d) = f.network_allowed_domains.iter().find(|d| !is_domain(d)) {
            return Err(SpecError::invalid(
                "networkAllowedDomains",
                format!("{d:?} is not a domain name"),
            ));
        }
        let hash_ok = !f.content_hash.is_empty()
            && f.content_hash.len() <= 128
            && f.content_hash
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b':'));
        if !hash_ok {
            return Err(SpecError::invalid(
                "contentHash",
                "must be 1-128 characters of A-Z, a-z, 0-9, '-', '_', ':'",
            ));
        }
        if f.labels.len() > MAX_LABELS {
            return Err(SpecError::invalid(
                "labels",
                format!("has more than {MAX_LABELS} entries"),
            ));
        }
        for (k, v) in &f.labels {
            let key_ok = !k.is_empty()
                && k.len() <= 63
                && k.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/'));
            if !key_ok {
                return Err(SpecError::invalid(
                    "labels",
                    format!("key {k:?} is not a label key"),
                ));
            }
            if v.len() > 253 || v.chars().any(char::is_control) {
                return Err(SpecError::invalid(
                    "labels",
                    format!("value of {k:?} is too long or has control characters"),
                ));
            }
        }
        if let Some(hc) = &f.health_check {
            hc.validate()?;
        }
        if let Some(u) = &f.update {
            u.validate()?;
        }
        Ok(VmSpec {
            project,
            name,
            toplevel,
            kernel_path,
            initrd_path,
            disk_image_path,
            cmdline: f.cmdline,
            cpu: f.cpu,
            memory_mb: f.memory_mb,
            network_allowed_domains: f.network_allowed_domains,
            content_hash: f.content_hash,
            labels: f.labels,
            health_check: f.health_check,
            update: f.update,
        })
    }

    /// Parses the camelCase JSON Nix writes for one VM.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    pub fn name(&self) -> &VmName {
        &self.name
    }
    /// The project the spec was published for; `None` before publishing.
    pub fn assigned_project(&self) -> Option<&ProjectName> {
        self.project.as_ref()
    }
    /// The project the VM belongs to: [`DEFAULT_PROJECT`] when none was set.
    pub fn project(&self) -> &str {
        self.project
            .as_ref()
            .map_or(DEFAULT_PROJECT, ProjectName::as_str)
    }
    /// The VM's identity across projects.
    pub fn key(&self) -> VmKey {
        VmKey {
            project: self.project.clone().unwrap_or_default(),
            name: self.name.clone(),
        }
    }
    /// The same spec, belonging to `project`.
    pub fn with_project(mut self, project: ProjectName) -> Self {
        self.project = Some(project);
        self
    }
    pub fn toplevel(&self) -> &StorePath {
        &self.toplevel
    }
    pub fn kernel_path(&self) -> &StorePath {
        &self.kernel_path
    }
    pub fn initrd_path(&self) -> Option<&StorePath> {
        self.initrd_path.as_ref()
    }
    pub fn disk_image_path(&self) -> Option<&StorePath> {
        self.disk_image_path.as_ref()
    }
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }
    pub fn cpu(&self) -> u32 {
        self.cpu
    }
    pub fn memory_mb(&self) -> u64 {
        self.memory_mb
    }
    pub fn network_allowed_domains(&self) -> &[String] {
        &self.network_allowed_domains
    }
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
    /// The health check the worker runs; `None` = running counts as healthy.
    pub fn health_check(&self) -> Option<&HealthCheck> {
        self.health_check.as_ref()
    }
    /// The group's rollout policy; `None` = replaced at once.
    pub fn update(&self) -> Option<&UpdatePolicy> {
        self.update.as_ref()
    }

    /// Every top-level store path this VM boots from, deduplicated and
    /// sorted: the closure roots a worker must have before starting it.
    pub fn store_roots(&self) -> Vec<&str> {
        let mut roots: Vec<&str> = [
            Some(&self.toplevel),
            Some(&self.kernel_path),
            self.initrd_path.as_ref(),
            self.disk_image_path.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(StorePath::store_root)
        .collect();
        roots.sort_unstable();
        roots.dedup();
        roots
    }

    /// Back to plain fields (for a builder or an edited copy in tests).
    pub fn to_fields(&self) -> VmSpecFields {
        VmSpecFields {
            project: self
                .project
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            name: self.name.to_string(),
            toplevel: self.toplevel.to_string(),
            kernel_path: self.kernel_path.to_string(),
            initrd_path: self
                .initrd_path
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            disk_image_path: self
                .disk_image_path
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            cmdline: self.cmdline.clone(),
            cpu: self.cpu,
            memory_mb: self.memory_mb,
            network_allowed_domains: self.network_allowed_domains.clone(),
            content_hash: self.content_hash.clone(),
            labels: self.labels.clone(),
            health_check: self.health_check.clone(),
            update: self.update.clone(),
        }
    }
}

impl TryFrom<VmSpecFields> for VmSpec {
    type Error = SpecError;
    fn try_from(f: VmSpecFields) -> Result<Self, SpecError> {
        VmSpec::new(f)
    }
}

impl From<VmSpec> for VmSpecFields {
    fn from(s: VmSpec) -> VmSpecFields {
        s.to_fields()
    }
}

/// A VM's lifecycle state as reported over RPC (the worker's state machine
/// has more detail; this is what clients see).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Creating,
    Running,
    Paused,
    Stopping,
    Failed,
    Stopped,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Creating => "creating",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Failed => "failed",
            VmState::Stopped => "stopped",
        })
    }
}

/// A VM's health as its worker judges it (see [`HealthCheck`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The spec has no health check: a running VM counts as healthy.
    #[default]
    None,
    /// Checking: the line has not been seen and the deadline has not passed.
    Pending,
    /// The line was seen in time.
    Healthy,
    /// The deadline passed without the line, or the VM failed.
    Unhealthy,
}

impl Health {
    /// Whether the VM counts as healthy for a rollout: checked and passed,
    /// or unchecked and running.
    pub fn is_ok(self, state: VmState) -> bool {
        match self {
            Health::Healthy => true,
            Health::None => state == VmState::Running,
            Health::Pending | Health::Unhealthy => false,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::None => "none",
            Health::Pending => "pending",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// cpu and memory, the two resources the scheduler accounts for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub cpu: u32,
    pub memory_mb: u64,
}

/// Resource usage of one VM, sampled by its worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmMetrics {
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    /// Packets the worker's egress rules dropped: addresses no allowed
    /// domain resolved to, and DNS to any resolver but the worker's.
    #[serde(default)]
    pub egress_dropped_packets: u64,
}

/// What a worker says about one of its VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmStatus {
    pub id: VmId,
    /// The project the VM belongs to (`default` when its spec named none).
    #[serde(default)]
    pub project: ProjectName,
    pub name: VmName,
    pub content_hash: String,
    pub state: VmState,
    /// The CH process id; `None` when no process runs.
    pub pid: Option<u32>,
    /// Why the VM failed; empty unless `state` is `Failed`.
    pub error: String,
    pub created_at_ms: u64,
    pub cpu: u32,
    pub memory_mb: u64,
    /// `None` when the spec has no health check.
    #[serde(default)]
    pub health: Health,
    /// Why the VM is unhealthy (one line); empty otherwise.
    #[serde(default)]
    pub health_detail: String,
    /// Unix ms the check passed; `None` unless `health` is `Healthy`.
    #[serde(default)]
    pub healthy_since_ms: Option<u64>,
}

/// A label of a worker (placement constraint target).
pub type Labels = BTreeMap<String, String>;

/// A generation's intentHash: the sha256 (hex) of its specs' canonical
/// JSON. Two generations with the same intentHash want the same VMs, which
/// is what makes re-publishing a no-op. The text is not validated here: a
/// hash given by hand (`pcr-test --intent-hash`) or read back from the
/// control plane is carried as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IntentHash(String);

impl IntentHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl From<String> for IntentHash {
    fn from(s: String) -> Self {
        IntentHash(s)
    }
}

impl From<&str> for IntentHash {
    fn from(s: &str) -> Self {
        IntentHash(s.to_owned())
    }
}

impl fmt::Display for IntentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a generation's intent is made of: the specs' canonical JSON
/// (sorted by name; CI stores it as the generation's specs) and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub hash: IntentHash,
    pub canonical_json: String,
}

/// The canonical JSON of a generation's specs (sorted by name) and its
/// sha256 in hex: the intentHash. Equal exactly when the desired state is
/// equal, so CI and `pcr-test` agree and re-publishing is a no-op.
pub fn intent_hash(specs: &[VmSpec]) -> Intent {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&VmSpec> = specs.iter().collect();
    sorted.sort_by(|a, b| a.name().cmp(b.name()));
    let json = serde_json::to_string(&sorted).expect("VmSpec serializes");
    let digest = Sha256::digest(json.as_bytes());
    Intent {
        hash: IntentHash(digest.iter().map(|b| format!("{b:02x}")).collect()),
        canonical_json: json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: &str = "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-nixos-system";
    const KERNEL: &str = "/nix/store/1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-linux-6.1/bzImage";

    fn fields() -> VmSpecFields {
        VmSpecFields {
            name: "web-0".into(),
            toplevel: TOP.into(),
            kernel_path: KERNEL.into(),
            cmdline: "console=ttyS0".into(),
            cpu: 1,
            memory_mb: 256,
            content_hash: "abc123".into(),
            ..Default::default()
        }
    }

    #[test]
    fn valid_spec_round_trips_through_json() {
        let spec = VmSpec::new(fields()).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"kernelPath\""), "{json}");
        assert!(json.contains("\"memoryMb\":256"), "{json}");
        assert_eq!(VmSpec::from_json(&json).unwrap(), spec);
    }

    #[test]
    fn store_roots_strip_inner_paths_and_dedup() {
        let mut f = fields();
        f.disk_image_path = format!("{TOP}/disk.img");
        let spec = VmSpec::new(f).unwrap();
        assert_eq!(
            spec.store_roots(),
            vec![
                "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-nixos-system",
                "/nix/store/1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-linux-6.1"
            ]
        );
        assert_eq!(
            spec.kernel_path().hash_part(),
            "1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d"
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = fn(&mut VmSpecFields);
        let cases: Vec<(Mutation, &str)> = vec![
            (|f| f.name = "Web_0".into(), "name"),
            (|f| f.name = String::new(), "name"),
            (|f| f.toplevel = String::new(), "toplevel: is empty"),
            (|f| f.toplevel = "relative/path".into(), "toplevel"),
            (|f| f.toplevel = "/nix/store/short-x".into(), "toplevel"),
            (
                |f| f.kernel_path = format!("{TOP}/../etc/passwd"),
                "kernelPath",
            ),
            (|f| f.initrd_path = "/tmp/initrd".into(), "initrdPath"),
            (|f| f.cpu = 0, "cpu: must be 1..="),
            (|f| f.memory_mb = 0, "memoryMb: must be 1..="),
            (|f| f.content_hash = String::new(), "contentHash"),
            (
                |f| f.network_allowed_domains = vec!["not a domain".into()],
                "networkAllowedDomains",
            ),
            (
                |f| {
                    f.labels.insert("bad key".into(), "v".into());
                },
                "labels",
            ),
            (
                |f| f.health_check = Some(check("", 1000)),
                "healthCheck.consoleLine: must be 1..=256",
            ),
            (
                |f| f.health_check = Some(check(&"x".repeat(257), 1000)),
                "healthCheck.consoleLine: must be 1..=256 characters, got 257",
            ),
            (
                |f| f.health_check = Some(check("READY\nfake", 1000)),
                "healthCheck.consoleLine: must be printable",
            ),
            (
                |f| f.health_check = Some(check("READY", 0)),
                "healthCheck.deadlineMs: must be 1..=3600000, got 0",
            ),
            (
                |f| f.health_check = Some(check("READY", 3_600_001)),
                "healthCheck.deadlineMs",
            ),
        ];
        for (mutate, want) in cases {
            let mut f = fields();
            mutate(&mut f);
            let err = VmSpec::new(f).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
    }

    fn check(line: &str, deadline_ms: u64) -> HealthCheck {
        HealthCheck {
            console_line: line.into(),
            deadline_ms,
        }
    }

    #[test]
    fn health_check_is_camel_case_json_and_absent_when_unset() {
        let plain = VmSpec::new(fields()).unwrap();
        let json = serde_json::to_string(&plain).unwrap();
        // Specs without a check serialize as they did before checks existed,
        // so the intent hashes of existing generations do not change.
        assert!(!json.contains("healthCheck"), "{json}");
        let intent = intent_hash(std::slice::from_ref(&plain));
        assert_eq!(
            intent.canonical_json,
            format!(
                r#"[{{"name":"web-0","toplevel":"{TOP}","kernelPath":"{KERNEL}","initrdPath":"","diskImagePath":"","cmdline":"console=ttyS0","cpu":1,"memoryMb":256,"networkAllowedDomains":[],"contentHash":"abc123","labels":{{}}}}]"#
            )
        );
        assert_eq!(
            intent.hash.as_str(),
            "99111d3ae102bb4f0e2b929a43c90a376d8430fc103fd20e3484561f310401e6"
        );

        let mut f = fields();
        f.health_check = Some(check("READY", 30_000));
        let checked = VmSpec::new(f).unwrap();
        let json = serde_json::to_string(&checked).unwrap();
        assert!(
            json.contains(r#""healthCheck":{"consoleLine":"READY","deadlineMs":30000}"#),
            "{json}"
        );
        assert_eq!(VmSpec::from_json(&json).unwrap(), checked);
        // Part of the intent, not of what boots.
        assert_eq!(checked.content_hash(), plain.content_hash());
        assert_ne!(intent_hash(&[checked]).hash, intent_hash(&[plain]).hash);

        let err = VmSpec::from_json(&json.replace("deadlineMs", "deadline"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `deadline`"), "{err}");
    }

    fn policy(max_parallel: u32, min_healthy_ms: u64) -> UpdatePolicy {
        UpdatePolicy {
            group: "web".into(),
            max_parallel,
            min_healthy_ms,
            auto_revert: true,
        }
    }

    #[test]
    fn bad_update_policies_are_refused_with_the_setting_named() {
        let cases: [(UpdatePolicy, &str); 4] = [
            (policy(0, 0), "update.maxParallel: must be 1..=1000, got 0"),
            (
                policy(1001, 0),
                "update.maxParallel: must be 1..=1000, got 1001",
            ),
            (
                policy(1, 3_600_001),
                "update.minHealthyMs: must be 0..=3600000 (one hour), got 3600001",
            ),
            (
                UpdatePolicy {
                    group: "Web Servers".into(),
                    ..policy(1, 0)
                },
                "update.group: \"Web Servers\" is not a DNS label",
            ),
        ];
        for (p, want) in cases {
            let mut f = fields();
            f.update = Some(p);
            let err = VmSpec::new(f).unwrap_err().to_string();
            assert_eq!(err, want);
        }
        let mut f = fields();
        f.update = Some(policy(1000, 3_600_000));
        assert!(VmSpec::new(f).is_ok(), "the bounds themselves pass");
    }

    #[test]
    fn update_policy_is_camel_case_json_absent_when_unset_and_not_in_the_content_hash() {
        let plain = VmSpec::new(fields()).unwrap();
        assert!(!serde_json::to_string(&plain).unwrap().contains("update"));
        let mut f = fields();
        f.update = Some(policy(2, 10_000));
        let rolled = VmSpec::new(f).unwrap();
        let json = serde_json::to_string(&rolled).unwrap();
        assert!(
            json.contains(
                r#""update":{"group":"web","maxParallel":2,"minHealthyMs":10000,"autoRevert":true}"#
            ),
            "{json}"
        );
        assert_eq!(VmSpec::from_json(&json).unwrap(), rolled);
        assert_eq!(rolled.content_hash(), plain.content_hash());
        assert_ne!(intent_hash(&[rolled]).hash, intent_hash(&[plain]).hash);
        let err = VmSpec::from_json(&json.replace("maxParallel", "parallel"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `parallel`"), "{err}");
        let err = VmSpec::from_json(&json.replace(r#""maxParallel":2"#, r#""maxParallel":-1"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("maxParallel") || err.contains("-1"), "{err}");
    }

    #[test]
    fn health_counts_as_ok_only_when_checked_or_running() {
        assert!(Health::Healthy.is_ok(VmState::Running));
        assert!(Health::None.is_ok(VmState::Running));
        assert!(!Health::None.is_ok(VmState::Creating));
        assert!(!Health::Pending.is_ok(VmState::Running));
        assert!(!Health::Unhealthy.is_ok(VmState::Running));
        assert_eq!(
            serde_json::to_string(&Health::Unhealthy).unwrap(),
            "\"unhealthy\""
        );
    }

    #[test]
    fn json_missing_and_unknown_fields_are_named() {
        let err = VmSpec::from_json(r#"{"name":"a"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `toplevel`"), "{err}");
        let mut v = serde_json::to_value(VmSpec::new(fields()).unwrap()).unwrap();
        v["memoryMB"] = 3.into();
        let err = serde_json::from_value::<VmSpec>(v).unwrap_err().to_string();
        assert!(err.contains("unknown field `memoryMB`"), "{err}");
    }

    #[test]
    fn ids_validate() {
        assert!("worker-1".parse::<WorkerId>().is_ok());
        assert!("../etc".parse::<WorkerId>().is_err());
        let id = VmId::new_v7();
        assert_eq!(id.as_str().parse::<VmId>().unwrap(), id);
        assert!("not-a-uuid".parse::<VmId>().is_err());
    }
}

/// What a worker says about itself (`Worker.read`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    pub worker_id: WorkerId,
    pub address: String,
    pub capacity: Resources,
    pub allocated: Resources,
    pub labels: Labels,
    pub vm_count: u32,
    pub run_dir: String,
    pub version: String,
    pub uptime_ms: u64,
}

/// Everything a worker knows about one VM (`Worker.vmInfo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmDetails {
    pub status: VmStatus,
    pub spec: VmSpec,
    pub metrics: VmMetrics,
    /// The state cloud-hypervisor reports ("" when it could not be asked).
    pub ch_state: String,
    pub socket_path: String,
    pub serial_log_path: String,
}

/// The end of a VM's serial console (`Worker.logs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogTail {
    pub lines: Vec<String>,
    /// Older lines exist beyond what was returned.
    pub truncated: bool,
}
