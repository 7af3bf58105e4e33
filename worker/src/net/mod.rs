//! VM networking and egress that follows the push (design §12).
//!
//! Off unless the worker is given a bridge (`--bridge`). Then each VM gets
//! a TAP on that bridge and a fixed address in the VM subnet, recorded in
//! `<run dir>/net/<id>.json` so a worker restart keeps it. Egress is denied
//! by default (`nft`): a VM may send DNS to the worker's forwarder (`dns`)
//! and reach the addresses that its `networkAllowedDomains` resolved to,
//! for the answer's TTL. The worker resolves the VM's plain domains itself
//! when the VM is attached (a name that does not resolve is logged, and the
//! VM runs without an address for it); wildcard domains are learnt from
//! the VM's own queries. A new generation that changes only a VM's domains
//! changes its allowlist in place; deleting the VM removes its elements,
//! its TAP and its record; a worker restart resets the tables and attaches
//! every adopted VM again. A lookup still in flight when a VM's allowlist
//! is cleared (a domain taken away, the VM deleted) adds nothing when its
//! answer comes (`nft::Epoch`).
//!
//! `Egress` is an actor: a cloneable handle sends commands on a bounded
//! channel and waits for a oneshot reply; one task owns the allocation
//! table and the forwarder's view of who may resolve what.

pub mod addr;
pub mod dns;
pub mod link;
pub mod nft;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use self::addr::Subnet;
use self::dns::{DnsView, VmDns};
use self::link::Links;
use self::nft::Tables;
use crate::dto::VmId;
use crate::vmm::config::TapConfig;
use crate::vmm::user::VmOwner;

/// Why a network step failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("VM subnet {subnet:?}: {why}")]
    BadSubnet { subnet: String, why: String },
    #[error(
        "the bridge {0} does not exist (the host module, or `ip link add NAME type bridge`, makes it)"
    )]
    NoBridge(String),
    #[error("the VM subnet {0} has no free address left")]
    SubnetFull(Subnet),
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("nft failed {what}: {stderr}")]
    Nft { what: &'static str, stderr: String },
    #[error("ip {args} failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("cannot bind the DNS forwarder on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("DNS upstream {upstream}")]
    Upstream {
        upstream: SocketAddr,
        source: std::io::Error,
    },
    #[error("resolving {name}: {why}")]
    Dns { name: String, why: String },
    #[error("the network record {}", path.display())]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the egress task has stopped")]
    Stopped,
}

impl NetError {
    /// nft's answer when a deleted element is already gone.
    fn is_missing_element(&self) -> bool {
        matches!(self, NetError::Nft { stderr, .. } if stderr.contains("No such file or directory"))
    }
}

/// Runs `program args` with `stdin` (if any) as its input. The outer
/// error: it could not run; the inner one: it failed, with its stderr.
async fn run_tool(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Result<Vec<u8>, String>, NetError> {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    let spawn = |source| NetError::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await.map_err(spawn)?;
    }
    let out = child.wait_with_output().await.map_err(spawn)?;
    Ok(if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    })
}

/// How VMs are networked on this host.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The bridge the TAPs join; it must exist.
    pub bridge: String,
    /// The VM subnet; the bridge has its first address.
    pub subnet: Subnet,
    /// TAP names are this prefix and the tail of the VM id.
    pub tap_prefix: String,
    /// Where the forwarder listens (default: the bridge address, port 53).
    pub dns_listen: SocketAddr,
    /// The resolver the forwarder asks.
    pub dns_upstream: SocketAddr,
    /// Name of the worker's nftables tables (inet and bridge).
    pub table: String,
    /// The `nft` and `ip` programs.
    pub nft: String,
    pub ip: String,
    /// The owner of the TAPs: the VM user's uid and gid when CH runs as
    /// one (`--vm-user`), so it can open them; `None`: root's.
    pub tap_owner: Option<VmOwner>,
}

impl NetConfig {
    /// Defaults for `bridge` on `subnet`: TAP prefix `pcrt`, forwarder on
    /// the bridge address port 53, tables named `procurator`.
    pub fn new(bridge: String, subnet: Subnet, dns_upstream: SocketAddr) -> Self {
        NetConfig {
            bridge,
            dns_listen: SocketAddr::from((subnet.gateway(), 53)),
            subnet,
            tap_prefix: "pcrt".into(),
            dns_upstream,
            table: "procurator".into(),
            nft: "nft".into(),
            ip: "ip".into(),
            tap_owner: None,
        }
    }

    pub fn tap(&self) -> TapConfig {
        TapConfig {
            prefix: self.tap_prefix.clone(),
        }
    }

    fn tables(&self) -> Tables {
        Tables::new(&self.nft, &self.table, &self.bridge, &self.tap_prefix)
    }
}

/// One VM's place on the network (what its record holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNet {
    pub address: Ipv4Addr,
    pub tap: String,
    pub mac: String,
}

enum Msg {
    Attach {
        id: VmId,
        domains: Vec<String>,
        reply: oneshot::Sender<Result<VmNet, NetError>>,
    },
    Update {
        id: VmId,
        domains: Vec<String>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Detach {
        id: VmId,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Dropped {
        id: VmId,
        reply: oneshot::Sender<Result<u64, NetError>>,
    },
}

/// The handle to the egress task (cheap to clone).
#[derive(Debug, Clone)]
pub struct Egress {
    tx: mpsc::Sender<Msg>,
    tap: TapConfig,
    subnet: Subnet,
    dns: SocketAddr,
}

impl Egress {
    /// Checks the bridge, resets the tables, binds the forwarder and starts
    /// the task; everything stops when `shutdown` fires. The tables stay
    /// (VMs keep their rules while the worker is away; the next start
    /// resets and rebuilds them).
    pub async fn start(
        config: NetConfig,
        run_dir: &Path,
        shutdown: CancellationToken,
    ) -> Result<Egress, NetError> {
        let links = Links {
            ip: config.ip.clone(),
            bridge: config.bridge.clone(),
            owner: config.tap_owner,
        };
        links.check_bridge().await?;
        let tables = config.tables();
        tables.reset(config.dns_listen).await?;
        let socket = UdpSocket::bind(config.dns_listen)
            .await
            .map_err(|source| NetError::Bind {
                addr: config.dns_listen,
                source,
            })?;
        let records = run_dir.join("net");
        std::fs::create_dir_all(&records).map_err(|source| NetError::Record {
            path: records.clone(),
            source,
        })?;
        let (view_tx, view_rx) = watch::channel(DnsView::default());
        tokio::spawn(dns::serve(
            socket,
            config.dns_upstream,
            tables.clone(),
            view_rx,
            shutdown.clone(),
        ));
        let (tx, rx) = mpsc::channel(64);
        let tap = config.tap();
        let (subnet, dns) = (config.subnet, config.dns_listen);
        let actor = Actor {
            links,
            tables,
            records,
            vms: BTreeMap::new(),
            view: view_tx,
            drops: None,
            config,
        };
        tokio::spawn(actor.run(rx, shutdown));
        tracing::info!("egress filtering on");
        Ok(Egress {
            tx,
            tap,
            subnet,
            dns,
        })
    }

    /// Gives `id` its TAP, address and rules (again, after a restart: the
    /// recorded address is kept), and allows what `domains` resolve to.
    pub async fn attach(&self, id: &VmId, domains: &[String]) -> Result<VmNet, NetError> {
        self.call(|reply| Msg::Attach {
            id: id.clone(),
            domains: domains.to_vec(),
            reply,
        })
        .await
    }

    /// Changes what a running VM may reach.
    pub async fn update(&self, id: &VmId, domains: &[String]) -> Result<(), NetError> {
        self.call(|reply| Msg::Update {
            id: id.clone(),
            domains: domains.to_vec(),
            reply,
        })
        .await
    }

    /// Removes the VM's rules, TAP and record (what of them exists).
    pub async fn detach(&self, id: &VmId) -> Result<(), NetError> {
        self.call(|reply| Msg::Detach {
            id: id.clone(),
            reply,
        })
        .await
    }

    /// Packets dropped from this VM since it was attached by this worker.
    pub async fn dropped_packets(&self, id: &VmId) -> Result<u64, NetError> {
        self.call(|reply| Msg::Dropped {
            id: id.clone(),
            reply,
        })
        .await
    }

    /// The kernel's `ip=` argument that configures the guest's NIC with
    /// its fixed address, the bridge as gateway and the forwarder as its
    /// only DNS server (no DHCP on the bridge: the worker decides).
    pub fn guest_cmdline(&self, net: &VmNet) -> String {
        format!(
            "ip={}::{}:{}:::off:{}",
            net.address,
            self.subnet.gateway(),
            self.subnet.mask(),
            self.dns.ip()
        )
    }

    /// The TAP naming the VMs' NICs use.
    pub fn tap_config(&self) -> &TapConfig {
        &self.tap
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, NetError>>) -> Msg,
    ) -> Result<T, NetError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }
}

struct Attached {
    net: VmNet,
    domains: Arc<[String]>,
}

struct Actor {
    config: NetConfig,
    links: Links,
    tables: Tables,
    records: PathBuf,
    vms: BTreeMap<VmId, Attached>,
    view: watch::Sender<DnsView>,
    /// Every VM's drop counter as last read, and when.
    drops: Option<(Instant, HashMap<Ipv4Addr, u64>)>,
}

/// How long one reading of the drop counters serves.
const DROPS_FRESH: Duration = Duration::from_millis(500);

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, shutdown: CancellationToken) {
        loop {
            let msg = tokio::select! {
                () = shutdown.cancelled() => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
            };
            match msg {
                Msg::Attach { id, domains, reply } => {
                    let _ = reply.send(self.attach(&id, domains).await);
                }
                Msg::Update { id, domains, reply } => {
                    let _ = reply.send(self.update(&id, domains).await);
                }
                Msg::Detach { id, reply } => {
                    let _ = reply.send(self.detach(&id).await);
                }
                Msg::Dropped { id, reply } => {
                    let _ = reply.send(self.dropped(&id).await);
                }
            }
        }
    }

    /// The VM's drop counter, from a reading of all of them at most
    /// `DROPS_FRESH` old.
    async fn dropped(&mut self, id: &VmId) -> Result<u64, NetError> {
        let Some(addr) = self.vms.get(id).map(|a| a.net.address) else {
            return Ok(0);
        };
        let fresh = self
            .drops
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < DROPS_FRESH);
        if !fresh {
            self.drops = Some((Instant::now(), self.tables.dropped().await?));
        }
        Ok(self
            .drops
            .as_ref()
            .and_then(|(_, m)| m.get(&addr).copied())
            .unwrap_or(0))
    }

    fn record_path(&self, id: &VmId) -> PathBuf {
        self.records.join(format!("{id}.json"))
    }

    fn read_record(&self, id: &VmId) -> Option<VmNet> {
        let body = std::fs::read(self.record_path(id)).ok()?;
        serde_json::from_slice::<VmNet>(&body)
            .ok()
            .filter(|n| self.config.subnet.is_vm_address(n.address))
    }

    fn write_record(&self, id: &VmId, net: &VmNet) -> Result<(), NetError> {
        let path = self.record_path(id);
        let tmp = path.with_extension("json.tmp");
        let err = |source| NetError::Record {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec(net)
            .map_err(std::io::Error::other)
            .map_err(err)?;
        std::fs::write(&tmp, body).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    async fn attach(&mut self, id: &VmId, domains: Vec<String>) -> Result<VmNet, NetError> {
        if let Some(a) = self.vms.get(id) {
            let net = a.net.clone();
            self.update(id, domains).await?;
            return Ok(net);
        }
        let taken: HashSet<Ipv4Addr> = self.vms.values().map(|a| a.net.address).collect();
        let net = match self.read_record(id).filter(|n| !taken.contains(&n.address)) {
            Some(n) => n,
            None => {
                let tap = self.config.tap();
                VmNet {
                    address: self
                        .config
                        .subnet
                        .allocate(id.as_str(), &taken)
                        .ok_or(NetError::SubnetFull(self.config.subnet))?,
                    tap: tap.tap_name(id),
                    mac: tap.mac(id),
                }
            }
        };
        // Recorded first: whatever fails next, detach finds what to undo.
        self.write_record(id, &net)?;
        // Independent (the rules name the TAP, they do not need it to
        // exist), so the two processes run side by side.
        let (linked, ruled) = tokio::join!(
            self.links.attach(&net.tap),
            self.tables.add_vm(&net.tap, net.address)
        );
        let installed = linked.and(ruled);
        if let Err(e) = installed {
            let _ = self.links.remove(&net.tap).await;
            let _ = std::fs::remove_file(self.record_path(id));
            return Err(e);
        }
        let domains: Arc<[String]> = domains.into();
        self.vms.insert(
            id.clone(),
            Attached {
                net: net.clone(),
                domains: domains.clone(),
            },
        );
        self.publish();
        self.resolve_in_background(id, net.address, &domains);
        tracing::info!(vm_id = %id, address = %net.address, tap = %net.tap, "VM attached to the bridge");
        Ok(net)
    }

    async fn update(&mut self, id: &VmId, domains: Vec<String>) -> Result<(), NetError> {
        let Some(a) = self.vms.get_mut(id) else {
            return Ok(());
        };
        if *a.domains == *domains {
            return Ok(());
        }
        let narrowed = a.domains.iter().any(|d| !domains.contains(d));
        let address = a.net.address;
        a.domains = domains.into();
        let domains = a.domains.clone();
        self.publish();
        // Addresses are not tagged with the name they were resolved for: a
        // domain taken away clears the VM's allowlist, and the plain names
        // it keeps are resolved again at once below.
        if narrowed {
            self.tables.forget_allowed(address).await?;
        }
        self.resolve_in_background(id, address, &domains);
        tracing::info!(vm_id = %id, domains = ?domains, "VM egress allowlist changed");
        Ok(())
    }

    async fn detach(&mut self, id: &VmId) -> Result<(), NetError> {
        let net = match self.vms.remove(id) {
            Some(a) => {
                self.publish();
                Some(a.net)
            }
            None => self.read_record(id),
        };
        if let Some(net) = net {
            self.tables.remove_vm(&net.tap, net.address).await?;
            self.links.remove(&net.tap).await?;
            tracing::info!(vm_id = %id, address = %net.address, "VM detached from the bridge");
        }
        match std::fs::remove_file(self.record_path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NetError::Record {
                path: self.record_path(id),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    fn publish(&self) {
        let view: HashMap<Ipv4Addr, VmDns> = self
            .vms
            .iter()
            .map(|(id, a)| {
                (
                    a.net.address,
                    VmDns {
                        vm_id: id.clone(),
                        domains: a.domains.clone(),
                    },
                )
            })
            .collect();
        self.view.send_replace(Arc::new(view));
    }

    /// Resolves the VM's plain domains and allows their addresses, off the
    /// actor's loop (an upstream that is slow must not hold up creates).
    fn resolve_in_background(&self, id: &VmId, vm: Ipv4Addr, domains: &[String]) {
        let names: Vec<String> = domains
            .iter()
            .filter(|d| !d.starts_with("*."))
            .cloned()
            .collect();
        if names.is_empty() {
            return;
        }
        let (upstream, tables, id) = (self.config.dns_upstream, self.tables.clone(), id.clone());
        // Taken now, after any clearing of the allowlist: if a later
        // generation clears it again, what is still being resolved here
        // adds nothing (that generation resolves its own names).
        let epoch = tables.epoch(vm);
        tokio::spawn(async move {
            for name in names {
                match dns::resolve(upstream, &name).await {
                    Ok(addrs) if addrs.is_empty() => {
                        tracing::warn!(vm_id = %id, domain = %name, "allowed domain has no IPv4 address; the VM gets none for it")
                    }
                    Ok(addrs) => match tables.allow_since(vm, epoch, &addrs).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::debug!(vm_id = %id, "the VM's allowlist changed: its earlier lookups stop");
                            return;
                        }
                        Err(e) => {
                            tracing::error!(vm_id = %id, domain = %name, error = %commands::report::error_chain(&e), "cannot allow a domain's addresses");
                        }
                    },
                    Err(e) => {
                        tracing::warn!(vm_id = %id, domain = %name, error = %commands::report::error_chain(&e), "allowed domain does not resolve; the VM runs without an address for it")
                    }
                }
            }
        });
    }
}
