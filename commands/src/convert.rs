//! Conversions between Cap'n Proto readers/builders and the domain types.
//!
//! Server impls call `*_from_capnp` on every incoming reader so that a
//! malformed message becomes one clear error at the edge, and `*_to_capnp`
//! to fill results. Nothing else in the workspace walks capnp readers of
//! these structs.

pub mod master;

use std::collections::BTreeMap;

use crate::common_capnp::{self, ErrorCode as CapnpErrorCode};
use crate::types::{
    Health, HealthCheck, Labels, ProjectName, Resources, SpecError, VmId, VmMetrics, VmName,
    VmSpec, VmSpecFields, VmState, VmStatus,
};

/// Why a message could not be turned into a domain value.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("malformed message")]
    Capnp(#[from] capnp::Error),
    #[error("text field is not UTF-8")]
    Utf8(#[from] std::str::Utf8Error),
    #[error("invalid value")]
    Spec(#[from] SpecError),
    #[error("enum value {0} is unknown to this version")]
    UnknownEnum(u16),
    #[error("list has {len} entries, more than the {max} allowed")]
    TooLong { len: u32, max: u32 },
    #[error("text field has {len} bytes, more than the {max} allowed")]
    TextTooLong { len: u32, max: u32 },
}

impl ConvertError {
    /// One line with the whole cause chain, for an RPC error message.
    pub fn to_message(&self) -> String {
        match self {
            ConvertError::Capnp(e) => format!("malformed message: {}", e.extra),
            ConvertError::Utf8(e) => format!("text field is not UTF-8: {e}"),
            ConvertError::Spec(e) => format!("invalid value: {e}"),
            other => other.to_string(),
        }
    }
}

/// The longest text field any request may carry (a kernel command line,
/// a store path, a commit): 64 KiB. Longer text is refused before it is
/// copied, so one request cannot make the server allocate without bound.
pub const MAX_TEXT: u32 = 64 * 1024;

/// Reads a text field as an owned String, refusing more than [`MAX_TEXT`] bytes.
pub fn text(r: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, ConvertError> {
    let r = r?;
    if r.len() > MAX_TEXT as usize {
        let len = u32::try_from(r.len()).unwrap_or(u32::MAX);
        return Err(ConvertError::TextTooLong { len, max: MAX_TEXT });
    }
    Ok(r.to_str()?.to_owned())
}

/// The most list entries any request may carry (specs per generation, VMs
/// per report); a larger list is refused before it is walked.
pub const MAX_LIST: u32 = 100_000;

pub fn check_len(len: u32, max: u32) -> Result<(), ConvertError> {
    if len > max {
        Err(ConvertError::TooLong { len, max })
    } else {
        Ok(())
    }
}

pub fn labels_to_capnp(
    labels: &Labels,
    mut b: capnp::struct_list::Builder<'_, common_capnp::label::Owned>,
) {
    for (i, (k, v)) in labels.iter().enumerate() {
        let mut l = b.reborrow().get(i as u32);
        l.set_key(k);
        l.set_value(v);
    }
}

pub fn labels_from_capnp(
    r: capnp::struct_list::Reader<'_, common_capnp::label::Owned>,
) -> Result<Labels, ConvertError> {
    check_len(r.len(), crate::types::MAX_LABELS as u32)?;
    let mut out = BTreeMap::new();
    for l in r.iter() {
        out.insert(text(l.get_key())?, text(l.get_value())?);
    }
    Ok(out)
}

pub fn vm_spec_to_capnp(spec: &VmSpec, mut b: common_capnp::vm_spec::Builder<'_>) {
    b.set_project(spec.assigned_project().map_or("", |p| p.as_str()));
    b.set_name(spec.name().as_str());
    b.set_toplevel(spec.toplevel().as_str());
    b.set_kernel_path(spec.kernel_path().as_str());
    b.set_initrd_path(spec.initrd_path().map_or("", |p| p.as_str()));
    b.set_disk_image_path(spec.disk_image_path().map_or("", |p| p.as_str()));
    b.set_cmdline(spec.cmdline());
    b.set_cpu(spec.cpu());
    b.set_memory_mb(spec.memory_mb());
    let domains = spec.network_allowed_domains();
    let mut d = b
        .reborrow()
        .init_network_allowed_domains(domains.len() as u32);
    for (i, dom) in domains.iter().enumerate() {
        d.set(i as u32, dom);
    }
    b.set_content_hash(spec.content_hash());
    labels_to_capnp(
        spec.labels(),
        b.reborrow().init_labels(spec.labels().len() as u32),
    );
    if let Some(hc) = spec.health_check() {
        let mut h = b.init_health_check();
        h.set_console_line(&hc.console_line);
        h.set_deadline_ms(hc.deadline_ms);
    }
}

/// An unset `healthCheck` pointer is "no check" (a peer from before checks
/// existed sends none).
fn health_check_from_capnp(
    r: common_capnp::vm_spec::Reader<'_>,
) -> Result<Option<HealthCheck>, ConvertError> {
    if !r.has_health_check() {
        return Ok(None);
    }
    let h = r.get_health_check()?;
    Ok(Some(HealthCheck {
        console_line: text(h.get_console_line())?,
        deadline_ms: h.get_deadline_ms(),
    }))
}

pub fn vm_spec_from_capnp(r: common_capnp::vm_spec::Reader<'_>) -> Result<VmSpec, ConvertError> {
    let domains_r = r.get_network_allowed_domains()?;
    check_len(domains_r.len(), crate::types::MAX_DOMAINS as u32)?;
    let mut domains = Vec::with_capacity(domains_r.len() as usize);
    for d in domains_r.iter() {
        domains.push(text(d)?);
    }
    Ok(VmSpec::new(VmSpecFields {
        project: text(r.get_project())?,
        name: text(r.get_name())?,
        toplevel: text(r.get_toplevel())?,
        kernel_path: text(r.get_kernel_path())?,
        initrd_path: text(r.get_initrd_path())?,
        disk_image_path: text(r.get_disk_image_path())?,
        cmdline: text(r.get_cmdline())?,
        cpu: r.get_cpu(),
        memory_mb: r.get_memory_mb(),
        network_allowed_domains: domains,
        content_hash: text(r.get_content_hash())?,
        labels: labels_from_capnp(r.get_labels()?)?,
        health_check: health_check_from_capnp(r)?,
    })?)
}

/// A project name from the wire: empty (a peer from before projects, or a
/// field left unset) is the default project.
pub fn project_from_text(s: String) -> Result<ProjectName, ConvertError> {
    if s.is_empty() {
        Ok(ProjectName::default())
    } else {
        Ok(s.parse::<ProjectName>()?)
    }
}

pub fn vm_specs_from_capnp(
    r: capnp::struct_list::Reader<'_, common_capnp::vm_spec::Owned>,
) -> Result<Vec<VmSpec>, ConvertError> {
    check_len(r.len(), MAX_LIST)?;
    r.iter().map(vm_spec_from_capnp).collect()
}

pub fn vm_state_to_capnp(s: VmState) -> common_capnp::VmState {
    match s {
        VmState::Creating => common_capnp::VmState::Creating,
        VmState::Running => common_capnp::VmState::Running,
        VmState::Paused => common_capnp::VmState::Paused,
        VmState::Stopping => common_capnp::VmState::Stopping,
        VmState::Failed => common_capnp::VmState::Failed,
        VmState::Stopped => common_capnp::VmState::Stopped,
    }
}

pub fn vm_state_from_capnp(s: common_capnp::VmState) -> VmState {
    match s {
        common_capnp::VmState::Creating => VmState::Creating,
        common_capnp::VmState::Running => VmState::Running,
        common_capnp::VmState::Paused => VmState::Paused,
        common_capnp::VmState::Stopping => VmState::Stopping,
        common_capnp::VmState::Failed => VmState::Failed,
        common_capnp::VmState::Stopped => VmState::Stopped,
    }
}

pub fn health_to_capnp(h: Health) -> common_capnp::Health {
    match h {
        Health::None => common_capnp::Health::None,
        Health::Pending => common_capnp::Health::Pending,
        Health::Healthy => common_capnp::Health::Healthy,
        Health::Unhealthy => common_capnp::Health::Unhealthy,
    }
}

pub fn health_from_capnp(h: common_capnp::Health) -> Health {
    match h {
        common_capnp::Health::None => Health::None,
        common_capnp::Health::Pending => Health::Pending,
        common_capnp::Health::Healthy => Health::Healthy,
        common_capnp::Health::Unhealthy => Health::Unhealthy,
    }
}

pub fn vm_status_to_capnp(s: &VmStatus, mut b: common_capnp::vm_status::Builder<'_>) {
    b.set_id(s.id.as_str());
    b.set_project(s.project.as_str());
    b.set_name(s.name.as_str());
    b.set_content_hash(&s.content_hash);
    b.set_state(vm_state_to_capnp(s.state));
    b.set_pid(s.pid.unwrap_or(0));
    b.set_error(&s.error);
    b.set_created_at_ms(s.created_at_ms);
    b.set_cpu(s.cpu);
    b.set_memory_mb(s.memory_mb);
    b.set_health(health_to_capnp(s.health));
    b.set_health_detail(&s.health_detail);
    b.set_healthy_since_ms(s.healthy_since_ms.unwrap_or(0));
}

pub fn vm_status_from_capnp(
    r: common_capnp::vm_status::Reader<'_>,
) -> Result<VmStatus, ConvertError> {
    let state = r.get_state().map_err(|e| ConvertError::UnknownEnum(e.0))?;
    let health = r.get_health().map_err(|e| ConvertError::UnknownEnum(e.0))?;
    Ok(VmStatus {
        id: text(r.get_id())?.parse::<VmId>()?,
        project: project_from_text(text(r.get_project())?)?,
        name: text(r.get_name())?.parse::<VmName>()?,
        content_hash: text(r.get_content_hash())?,
        state: vm_state_from_capnp(state),
        pid: Some(r.get_pid()).filter(|p| *p != 0),
        error: text(r.get_error())?,
        created_at_ms: r.get_created_at_ms(),
        cpu: r.get_cpu(),
        memory_mb: r.get_memory_mb(),
        health: health_from_capnp(health),
        health_detail: text(r.get_health_detail())?,
        healthy_since_ms: Some(r.get_healthy_since_ms()).filter(|t| *t != 0),
    })
}

pub fn vm_metrics_to_capnp(m: &VmMetrics, mut b: common_capnp::vm_metrics::Builder<'_>) {
    b.set_cpu_percent(m.cpu_percent);
    b.set_rss_bytes(m.rss_bytes);
    b.set_disk_read_bytes(m.disk_read_bytes);
    b.set_disk_write_bytes(m.disk_write_bytes);
    b.set_net_rx_bytes(m.net_rx_bytes);
    b.set_net_tx_bytes(m.net_tx_bytes);
    b.set_egress_dropped_packets(m.egress_dropped_packets);
}

pub fn vm_metrics_from_capnp(r: common_capnp::vm_metrics::Reader<'_>) -> VmMetrics {
    VmMetrics {
        cpu_percent: r.get_cpu_percent(),
        rss_bytes: r.get_rss_bytes(),
        disk_read_bytes: r.get_disk_read_bytes(),
        disk_write_bytes: r.get_disk_write_bytes(),
        net_rx_bytes: r.get_net_rx_bytes(),
        net_tx_bytes: r.get_net_tx_bytes(),
        egress_dropped_packets: r.get_egress_dropped_packets(),
    }
}

pub fn resources_to_capnp(r: Resources, mut b: common_capnp::resources::Builder<'_>) {
    b.set_cpu(r.cpu);
    b.set_memory_mb(r.memory_mb);
}

pub fn resources_from_capnp(r: common_capnp::resources::Reader<'_>) -> Resources {
    Resources {
        cpu: r.get_cpu(),
        memory_mb: r.get_memory_mb(),
    }
}

/// The error half of `Result(Ok)` as plain data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RpcFailure {
    pub code: ErrorCode,
    pub message: String,
}

/// Mirrors `common.capnp`'s ErrorCode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Internal,
    Unavailable,
    PermissionDenied,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorCode::InvalidArgument => "invalid argument",
            ErrorCode::NotFound => "not found",
            ErrorCode::AlreadyExists => "already exists",
            ErrorCode::FailedPrecondition => "failed precondition",
            ErrorCode::Internal => "internal error",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::PermissionDenied => "permission denied",
        })
    }
}

impl RpcFailure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcFailure {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
}

impl From<ConvertError> for RpcFailure {
    fn from(e: ConvertError) -> Self {
        RpcFailure::invalid(e.to_message())
    }
}

fn code_to_capnp(c: ErrorCode) -> CapnpErrorCode {
    match c {
        ErrorCode::InvalidArgument => CapnpErrorCode::InvalidArgument,
        ErrorCode::NotFound => CapnpErrorCode::NotFound,
        ErrorCode::AlreadyExists => CapnpErrorCode::AlreadyExists,
        ErrorCode::FailedPrecondition => CapnpErrorCode::FailedPrecondition,
        ErrorCode::Internal => CapnpErrorCode::Internal,
        ErrorCode::Unavailable => CapnpErrorCode::Unavailable,
        ErrorCode::PermissionDenied => CapnpErrorCode::PermissionDenied,
    }
}

fn code_from_capnp(c: CapnpErrorCode) -> ErrorCode {
    match c {
        CapnpErrorCode::InvalidArgument => ErrorCode::InvalidArgument,
        CapnpErrorCode::NotFound => ErrorCode::NotFound,
        CapnpErrorCode::AlreadyExists => ErrorCode::AlreadyExists,
        CapnpErrorCode::FailedPrecondition => ErrorCode::FailedPrecondition,
        CapnpErrorCode::Internal => ErrorCode::Internal,
        CapnpErrorCode::Unavailable => ErrorCode::Unavailable,
        CapnpErrorCode::PermissionDenied => ErrorCode::PermissionDenied,
    }
}

pub fn error_to_capnp(e: &RpcFailure, mut b: common_capnp::error::Builder<'_>) {
    b.set_code(code_to_capnp(e.code));
    b.set_message(&e.message);
}

pub fn error_from_capnp(r: common_capnp::error::Reader<'_>) -> Result<RpcFailure, ConvertError> {
    let code = r
        .get_code()
        .map(code_from_capnp)
        .unwrap_or(ErrorCode::Internal);
    Ok(RpcFailure {
        code,
        message: text(r.get_message())?,
    })
}

/// Reads a `Result(Ok)`: `Ok(Ok(reader))` on success, `Ok(Err(failure))`
/// when the server answered with an error as data.
pub fn result_from_capnp<'a, T>(
    r: common_capnp::result::Reader<'a, T>,
) -> Result<Result<<T as capnp::traits::Owned>::Reader<'a>, RpcFailure>, ConvertError>
where
    T: capnp::traits::Owned,
{
    match r.which().map_err(|e| ConvertError::UnknownEnum(e.0))? {
        common_capnp::result::Which::Ok(ok) => Ok(Ok(ok?)),
        common_capnp::result::Which::Err(err) => Ok(Err(error_from_capnp(err?)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_capnp() {
        let mut labels = BTreeMap::new();
        labels.insert("group".to_owned(), "web".to_owned());
        let spec = VmSpec::new(VmSpecFields {
            project: "team-b".into(),
            name: "web-0".into(),
            toplevel: "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys".into(),
            kernel_path: "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/kernel".into(),
            initrd_path: String::new(),
            disk_image_path: "/nix/store/1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-disk".into(),
            cmdline: "console=ttyS0".into(),
            cpu: 2,
            memory_mb: 512,
            network_allowed_domains: vec!["example.com".into()],
            content_hash: "h1".into(),
            labels,
            health_check: Some(HealthCheck {
                console_line: "READY".into(),
                deadline_ms: 30_000,
            }),
        })
        .unwrap();
        let mut msg = capnp::message::Builder::new_default();
        vm_spec_to_capnp(&spec, msg.init_root());
        let r = msg
            .get_root_as_reader::<common_capnp::vm_spec::Reader<'_>>()
            .unwrap();
        assert_eq!(vm_spec_from_capnp(r).unwrap(), spec);
    }

    #[test]
    fn invalid_capnp_spec_is_refused_with_field() {
        let mut msg = capnp::message::Builder::new_default();
        let mut b = msg.init_root::<common_capnp::vm_spec::Builder<'_>>();
        b.set_name("ok");
        b.set_toplevel("/etc");
        let r = msg
            .get_root_as_reader::<common_capnp::vm_spec::Reader<'_>>()
            .unwrap();
        let err = vm_spec_from_capnp(r).unwrap_err().to_message();
        assert!(err.contains("toplevel"), "{err}");
    }

    #[test]
    fn spec_without_health_check_stays_without_one() {
        let spec = VmSpec::new(VmSpecFields {
            name: "web-0".into(),
            toplevel: "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys".into(),
            kernel_path: "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/kernel".into(),
            cpu: 1,
            memory_mb: 64,
            content_hash: "h".into(),
            ..Default::default()
        })
        .unwrap();
        let mut msg = capnp::message::Builder::new_default();
        vm_spec_to_capnp(&spec, msg.init_root());
        let r = msg
            .get_root_as_reader::<common_capnp::vm_spec::Reader<'_>>()
            .unwrap();
        assert!(!r.has_health_check());
        assert_eq!(vm_spec_from_capnp(r).unwrap().health_check(), None);
    }

    #[test]
    fn hostile_health_check_over_capnp_is_refused_with_field() {
        let mut msg = capnp::message::Builder::new_default();
        let mut b = msg.init_root::<common_capnp::vm_spec::Builder<'_>>();
        b.set_name("web-0");
        b.set_toplevel("/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys");
        b.set_kernel_path("/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/kernel");
        b.set_cpu(1);
        b.set_memory_mb(64);
        b.set_content_hash("h");
        let mut h = b.init_health_check();
        h.set_console_line("");
        h.set_deadline_ms(u64::MAX);
        let r = msg
            .get_root_as_reader::<common_capnp::vm_spec::Reader<'_>>()
            .unwrap();
        let err = vm_spec_from_capnp(r).unwrap_err().to_message();
        assert!(err.contains("healthCheck.consoleLine"), "{err}");
    }
}

pub fn worker_status_to_capnp(
    s: &crate::types::WorkerStatus,
    mut b: common_capnp::worker_status::Builder<'_>,
) {
    b.set_worker_id(s.worker_id.as_str());
    b.set_address(&s.address);
    resources_to_capnp(s.capacity, b.reborrow().init_capacity());
    resources_to_capnp(s.allocated, b.reborrow().init_allocated());
    labels_to_capnp(&s.labels, b.reborrow().init_labels(s.labels.len() as u32));
    b.set_vm_count(s.vm_count);
    b.set_run_dir(&s.run_dir);
    b.set_version(&s.version);
    b.set_uptime_ms(s.uptime_ms);
}

pub fn worker_status_from_capnp(
    r: common_capnp::worker_status::Reader<'_>,
) -> Result<crate::types::WorkerStatus, ConvertError> {
    Ok(crate::types::WorkerStatus {
        worker_id: text(r.get_worker_id())?.parse()?,
        address: text(r.get_address())?,
        capacity: resources_from_capnp(r.get_capacity()?),
        allocated: resources_from_capnp(r.get_allocated()?),
        labels: labels_from_capnp(r.get_labels()?)?,
        vm_count: r.get_vm_count(),
        run_dir: text(r.get_run_dir())?,
        version: text(r.get_version())?,
        uptime_ms: r.get_uptime_ms(),
    })
}

pub fn vm_details_to_capnp(
    d: &crate::types::VmDetails,
    mut b: crate::worker_capnp::vm_info::Builder<'_>,
) {
    vm_status_to_capnp(&d.status, b.reborrow().init_status());
    vm_spec_to_capnp(&d.spec, b.reborrow().init_spec());
    vm_metrics_to_capnp(&d.metrics, b.reborrow().init_metrics());
    b.set_ch_state(&d.ch_state);
    b.set_socket_path(&d.socket_path);
    b.set_serial_log_path(&d.serial_log_path);
}

pub fn vm_details_from_capnp(
    r: crate::worker_capnp::vm_info::Reader<'_>,
) -> Result<crate::types::VmDetails, ConvertError> {
    Ok(crate::types::VmDetails {
        status: vm_status_from_capnp(r.get_status()?)?,
        spec: vm_spec_from_capnp(r.get_spec()?)?,
        metrics: vm_metrics_from_capnp(r.get_metrics()?),
        ch_state: text(r.get_ch_state())?,
        socket_path: text(r.get_socket_path())?,
        serial_log_path: text(r.get_serial_log_path())?,
    })
}

pub fn log_tail_to_capnp(
    t: &crate::types::LogTail,
    mut b: crate::worker_capnp::log_tail::Builder<'_>,
) {
    let mut lines = b.reborrow().init_lines(t.lines.len() as u32);
    for (i, l) in t.lines.iter().enumerate() {
        lines.set(i as u32, l);
    }
    b.set_truncated(t.truncated);
}

pub fn log_tail_from_capnp(
    r: crate::worker_capnp::log_tail::Reader<'_>,
) -> Result<crate::types::LogTail, ConvertError> {
    let lines_r = r.get_lines()?;
    check_len(lines_r.len(), MAX_LIST)?;
    let mut lines = Vec::with_capacity(lines_r.len() as usize);
    for l in lines_r.iter() {
        lines.push(text(l)?);
    }
    Ok(crate::types::LogTail {
        lines,
        truncated: r.get_truncated(),
    })
}

#[cfg(test)]
mod worker_tests {
    use super::*;
    use crate::types::{LogTail, VmDetails, WorkerStatus};

    #[test]
    fn worker_status_round_trips() {
        let mut labels = BTreeMap::new();
        labels.insert("zone".to_owned(), "a".to_owned());
        let s = WorkerStatus {
            worker_id: "w-1".parse().unwrap(),
            address: "127.0.0.1:6000".into(),
            capacity: Resources {
                cpu: 8,
                memory_mb: 16384,
            },
            allocated: Resources {
                cpu: 2,
                memory_mb: 512,
            },
            labels,
            vm_count: 2,
            run_dir: "/run/pcr".into(),
            version: "0.1.0".into(),
            uptime_ms: 42,
        };
        let mut msg = capnp::message::Builder::new_default();
        worker_status_to_capnp(&s, msg.init_root());
        let r = msg
            .get_root_as_reader::<common_capnp::worker_status::Reader<'_>>()
            .unwrap();
        assert_eq!(worker_status_from_capnp(r).unwrap(), s);
    }

    #[test]
    fn vm_details_and_log_tail_round_trip() {
        let spec = VmSpec::new(VmSpecFields {
            project: "team-b".into(),
            name: "web-0".into(),
            toplevel: "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys".into(),
            kernel_path: "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/kernel".into(),
            cpu: 1,
            memory_mb: 128,
            content_hash: "h".into(),
            ..Default::default()
        })
        .unwrap();
        let d = VmDetails {
            status: VmStatus {
                id: VmId::new_v7(),
                project: "team-b".parse().unwrap(),
                name: spec.name().clone(),
                content_hash: "h".into(),
                state: VmState::Paused,
                pid: Some(7),
                error: String::new(),
                created_at_ms: 1,
                cpu: 1,
                memory_mb: 128,
                health: Health::Unhealthy,
                health_detail: "no READY on the console within 30000 ms".into(),
                healthy_since_ms: None,
            },
            spec,
            metrics: VmMetrics {
                rss_bytes: 5,
                egress_dropped_packets: 3,
                ..Default::default()
            },
            ch_state: "Paused".into(),
            socket_path: "/run/x.sock".into(),
            serial_log_path: "/run/x-serial.log".into(),
        };
        let mut msg = capnp::message::Builder::new_default();
        vm_details_to_capnp(&d, msg.init_root());
        let r = msg
            .get_root_as_reader::<crate::worker_capnp::vm_info::Reader<'_>>()
            .unwrap();
        assert_eq!(vm_details_from_capnp(r).unwrap(), d);

        let t = LogTail {
            lines: vec!["a".into(), "b".into()],
            truncated: true,
        };
        let mut msg = capnp::message::Builder::new_default();
        log_tail_to_capnp(&t, msg.init_root());
        let r = msg
            .get_root_as_reader::<crate::worker_capnp::log_tail::Reader<'_>>()
            .unwrap();
        assert_eq!(log_tail_from_capnp(r).unwrap(), t);
    }
}
