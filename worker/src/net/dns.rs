//! The DNS forwarder the VMs must use (UDP, on the bridge address).
//!
//! A query is answered only if its source is a VM this worker runs and its
//! one question names a domain in that VM's `networkAllowedDomains`
//! (`example.org` exactly; `*.example.org` any name below it, not the apex).
//! Allowed queries go to the upstream resolver as they are; the A records
//! of the answer are added to the VM's allowlist with the answer's TTL
//! before the answer is passed back, so the connection that follows is
//! already allowed (also when the worker's own lookup of the same name is
//! adding them at that moment: the answer waits for it). An answer that
//! comes after the VM's allowlist was cleared counts only if the VM may
//! still resolve the name; if not, it is REFUSED. Everything else is answered REFUSED: the name's
//! existence is not denied (NXDOMAIN would be cached as a fact by the
//! guest's resolver), the policy is said to refuse it. Messages are parsed
//! and built with the `simple-dns` crate.
//!
//! VMs have IPv4 addresses only, so AAAA answers are passed on but allow
//! nothing (IPv6 from a TAP is dropped at the bridge).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use simple_dns::rdata::RData;
use simple_dns::{CLASS, Name, Packet, PacketFlag, Question, RCODE, TYPE};
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::NetError;
use super::nft::{Epoch, Tables};
use crate::dto::VmId;

/// How long the upstream may take to answer one query.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Queries forwarded at once; more are answered SERVFAIL at once rather
/// than queued (a VM flooding the forwarder cannot make it hold memory).
const MAX_IN_FLIGHT: usize = 256;

/// What the forwarder knows of one VM: who it is and what it may resolve.
#[derive(Debug, Clone)]
pub struct VmDns {
    pub vm_id: VmId,
    pub domains: Arc<[String]>,
}

/// Every VM by address: the egress actor publishes a new map on each change.
pub type DnsView = Arc<HashMap<Ipv4Addr, VmDns>>;

/// Whether `name` (any case, with or without the final dot) is allowed by
/// `domains` (`example.org` exactly, `*.example.org` strictly below it).
pub fn allows(domains: &[String], name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    domains.iter().any(|d| {
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        match d.strip_prefix("*.") {
            Some(apex) => name
                .strip_suffix(apex)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => name == d,
        }
    })
}

/// Serves queries on `socket` until `shutdown`.
pub async fn serve(
    socket: UdpSocket,
    upstream: SocketAddr,
    tables: Tables,
    view: watch::Receiver<DnsView>,
    shutdown: CancellationToken,
) {
    let socket = Arc::new(socket);
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "DNS forwarder: receive failed");
                    continue;
                }
            },
        };
        let query = buf[..n].to_vec();
        // The epoch before the view: an allowlist cleared after this reading
        // (the view it follows is then older) makes the answer add nothing.
        let vm = match from.ip() {
            IpAddr::V4(a) => {
                let epoch = tables.epoch(a);
                view.borrow().get(&a).cloned().map(|v| (a, v, epoch))
            }
            IpAddr::V6(_) => None,
        };
        let Some((vm_addr, vm, epoch)) = vm else {
            tracing::debug!(%from, "DNS query from an address that is no VM: refused");
            reply_with(&socket, from, &query, RCODE::Refused).await;
            continue;
        };
        let Some(name) = single_question(&query) else {
            reply_with(&socket, from, &query, RCODE::FormatError).await;
            continue;
        };
        if !allows(&vm.domains, &name) {
            tracing::info!(vm_id = %vm.vm_id, %name, "DNS query for a name the VM may not reach: refused");
            reply_with(&socket, from, &query, RCODE::Refused).await;
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            reply_with(&socket, from, &query, RCODE::ServerFailure).await;
            continue;
        };
        let (socket, tables, view) = (socket.clone(), tables.clone(), view.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match exchange(upstream, &query).await {
                Ok(answer) => {
                    let addrs = a_records(&answer);
                    match allow_answer(&tables, &view, vm_addr, epoch, &name, &addrs).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::info!(vm_id = %vm.vm_id, %name, "the VM's allowlist changed while resolving; the name is no longer allowed: refused");
                            reply_with(&socket, from, &query, RCODE::Refused).await;
                            return;
                        }
                        Err(e) => {
                            tracing::error!(vm_id = %vm.vm_id, %name, error = %commands::report::error_chain(&e), "cannot allow the answer's addresses");
                            reply_with(&socket, from, &query, RCODE::ServerFailure).await;
                            return;
                        }
                    }
                    tracing::debug!(vm_id = %vm.vm_id, %name, addresses = addrs.len(), "DNS answer allowed");
                    let _ = socket.send_to(&answer, from).await;
                }
                Err(e) => {
                    tracing::warn!(vm_id = %vm.vm_id, %name, error = %commands::report::error_chain(&e), "upstream DNS failed");
                    reply_with(&socket, from, &query, RCODE::ServerFailure).await;
                }
            }
        });
    }
}

/// Allows an answer's addresses for the VM at `vm`, which could resolve
/// `name` in `epoch`. If its allowlist was cleared meanwhile (a new
/// generation took a domain away), the answer counts only if the VM may
/// still resolve `name`; `false` if not.
async fn allow_answer(
    tables: &Tables,
    view: &watch::Receiver<DnsView>,
    vm: Ipv4Addr,
    mut epoch: Epoch,
    name: &str,
    addrs: &[(Ipv4Addr, u32)],
) -> Result<bool, NetError> {
    for _ in 0..3 {
        if tables.allow_since(vm, epoch, addrs).await? {
            return Ok(true);
        }
        epoch = tables.epoch(vm);
        let still = view
            .borrow()
            .get(&vm)
            .is_some_and(|v| allows(&v.domains, name));
        if !still {
            return Ok(false);
        }
    }
    Ok(false)
}

/// Resolves `name`'s A records through `upstream` (the worker's own
/// lookups: it allows a VM's fixed names as soon as the VM starts).
pub async fn resolve(upstream: SocketAddr, name: &str) -> Result<Vec<(Ipv4Addr, u32)>, NetError> {
    let bad = |why: String| NetError::Dns {
        name: name.to_owned(),
        why,
    };
    let bytes = a_query(rand_id(), name)?;
    let answer = exchange(upstream, &bytes).await?;
    let parsed = Packet::parse(&answer).map_err(|e| bad(format!("unreadable answer: {e}")))?;
    match parsed.rcode() {
        RCODE::NoError => Ok(a_records(&answer)),
        rcode => Err(bad(format!("the upstream answered {rcode:?}"))),
    }
}

/// An A query for `name` (recursion desired), as sent on the wire.
pub fn a_query(id: u16, name: &str) -> Result<Vec<u8>, NetError> {
    let bad = |why: String| NetError::Dns {
        name: name.to_owned(),
        why,
    };
    let mut q = Packet::new_query(id);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    q.questions.push(Question::new(
        Name::new(name).map_err(|e| bad(e.to_string()))?,
        TYPE::A.into(),
        CLASS::IN.into(),
        false,
    ));
    q.build_bytes_vec().map_err(|e| bad(e.to_string()))
}

/// Sends `query` to `upstream` and waits for the answer with its id.
async fn exchange(upstream: SocketAddr, query: &[u8]) -> Result<Vec<u8>, NetError> {
    let io = |source| NetError::Upstream { upstream, source };
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await.map_err(io)?;
    sock.connect(upstream).await.map_err(io)?;
    sock.send(query).await.map_err(io)?;
    let id = query.get(..2).map(|b| [b[0], b[1]]);
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
            .map_err(io)?;
        // A connected socket takes datagrams from the upstream only; the
        // id check drops a late answer to some other query.
        if n >= 2 && Some([buf[0], buf[1]]) == id {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// The one question's name, if the message is a query with exactly one.
fn single_question(query: &[u8]) -> Option<String> {
    let p = Packet::parse(query).ok()?;
    if p.has_flags(PacketFlag::RESPONSE) || p.questions.len() != 1 {
        return None;
    }
    Some(p.questions[0].qname.to_string())
}

/// The A records of an answer with their TTLs (CNAME targets included:
/// the upstream is trusted to have followed the chain).
fn a_records(answer: &[u8]) -> Vec<(Ipv4Addr, u32)> {
    let Ok(p) = Packet::parse(answer) else {
        return Vec::new();
    };
    p.answers
        .iter()
        .filter_map(|rr| match &rr.rdata {
            RData::A(a) => Some((Ipv4Addr::from(a.address), rr.ttl)),
            _ => None,
        })
        .collect()
}

/// Answers `query` with no records and `rcode` (the question echoed when
/// it can be read; a header alone otherwise).
async fn reply_with(socket: &UdpSocket, to: SocketAddr, query: &[u8], rcode: RCODE) {
    let reply = match Packet::parse(query) {
        Ok(q) => {
            let mut r = Packet::new_reply(q.id());
            r.questions = q.questions;
            *r.rcode_mut() = rcode;
            r.build_bytes_vec()
        }
        Err(_) if query.len() >= 2 => {
            let mut r = Packet::new_reply(u16::from_be_bytes([query[0], query[1]]));
            *r.rcode_mut() = rcode;
            r.build_bytes_vec()
        }
        Err(_) => return,
    };
    if let Ok(bytes) = reply {
        let _ = socket.send_to(&bytes, to).await;
    }
}

/// A query id nobody can predict from the outside (the upstream answer is
/// matched on it).
fn rand_id() -> u16 {
    let mut b = [0u8; 2];
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.subsec_nanos() as u16;
    }
    u16::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_matching() {
        let d = vec!["example.org".to_owned(), "*.Cdn.Example.NET".to_owned()];
        assert!(allows(&d, "example.org"));
        assert!(allows(&d, "EXAMPLE.org."));
        assert!(!allows(&d, "www.example.org"), "no wildcard: exact only");
        assert!(!allows(&d, "badexample.org"));
        assert!(allows(&d, "a.cdn.example.net"));
        assert!(allows(&d, "a.b.cdn.example.net"));
        assert!(
            !allows(&d, "cdn.example.net"),
            "the wildcard's apex is not below it"
        );
        assert!(!allows(&d, "xcdn.example.net"));
        assert!(!allows(&[], "example.org"));
    }

    #[test]
    fn refusals_echo_the_question_and_answers_give_their_a_records() {
        let bytes = a_query(77, "x.example.org").unwrap();
        assert_eq!(single_question(&bytes).as_deref(), Some("x.example.org"));
        let mut r = Packet::new_reply(77);
        r.questions = Packet::parse(&bytes).unwrap().questions;
        r.answers.push(simple_dns::ResourceRecord::new(
            Name::new("x.example.org").unwrap(),
            CLASS::IN,
            42,
            RData::A(simple_dns::rdata::A {
                address: u32::from(Ipv4Addr::new(192, 0, 2, 7)),
            }),
        ));
        let bytes = r.build_bytes_vec().unwrap();
        assert_eq!(a_records(&bytes), vec![(Ipv4Addr::new(192, 0, 2, 7), 42)]);
        assert_eq!(single_question(&bytes), None, "an answer is not a query");
        assert_eq!(single_question(b"\x00"), None);
    }
}
