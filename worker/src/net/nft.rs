//! The worker's nftables tables, driven through the `nft` tool (each
//! change one atomic `nft -f -` batch; reads with `nft -j`).
//!
//! Two tables named `<table>`, owned by the worker and rebuilt at start:
//! - `inet <table>`: traffic entering from the bridge jumps to
//!   `vm_egress` (forwarded) or `vm_to_host` (to the host). A packet is
//!   accepted if it continues a connection, if `(VM address, destination)`
//!   is in the `allow` set (elements time out with the DNS answer's TTL),
//!   or, towards the host, if it is DNS to the worker's forwarder. What
//!   is left is dropped; packets from a known VM are dropped by a rule
//!   that looks them up in `vms`, a set with per-element counters, so
//!   each VM's drops are counted on its own element.
//! - `bridge <table>`: a TAP may send IPv4 and ARP only from its VM's
//!   address (`ports`: TAP name . address), so one VM cannot borrow
//!   another's allowlist by forging its source or take its address over
//!   ARP; IPv6 from TAPs is dropped.
//!
//! Adding a VM adds two set elements and no rule or chain, so the cost of
//! an install does not grow with the number of VMs (nft fetches no set
//! contents for an element add).

use super::{NetError, run_tool};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The longest a DNS answer keeps an address allowed (a day), whatever
/// TTL the upstream gave; the shortest is one second (0 would mean "never
/// expires" to nftables).
pub const MAX_ALLOW_SECS: u32 = 86_400;

/// One worker's tables: their name, the bridge and TAP prefix they match.
#[derive(Debug, Clone)]
pub struct Tables {
    nft: String,
    table: String,
    bridge: String,
    tap_prefix: String,
    /// When each (VM, destination) this worker allowed expires, and
    /// whether the batch that put it there has returned. Deleting an
    /// element costs nft a kernel grace period (~15 ms against ~3 ms for an
    /// add), so an answer renews an element only when it extends it, and a
    /// first answer is a plain add.
    state: Arc<Mutex<State>>,
}

/// What this worker knows of its allowlist (one lock, so an allowlist
/// cleared cannot be refilled by an answer it made obsolete).
#[derive(Debug, Default)]
struct State {
    known: HashMap<(Ipv4Addr, Ipv4Addr), Allowed>,
    /// Each VM's allowlist epoch: clearing it starts a new one.
    epochs: HashMap<Ipv4Addr, Epoch>,
}

/// A VM's allowlist epoch: a resolution started in one epoch allows
/// nothing once the VM's allowlist has been cleared (a generation took a
/// domain away, or the VM was deleted), so a lookup still in flight then
/// cannot bring back an address that is no longer allowed, nor leave one
/// for the next VM given the same address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Epoch(u64);

/// One (VM, destination) as this worker last set it.
#[derive(Debug)]
struct Allowed {
    until: Instant,
    /// `true` once the nft batch that added or renewed it has returned
    /// successfully. Its sender is dropped without `true` if the batch
    /// failed or was abandoned.
    installed: watch::Receiver<bool>,
}

impl Allowed {
    /// The batch meant to install it failed or was dropped half-way: the
    /// element may be missing, so it counts as unknown.
    fn abandoned(&self) -> bool {
        !*self.installed.borrow() && self.installed.has_changed().is_err()
    }
}

/// An answer renews an allowed address only if it extends it by more.
const RENEW_SLACK: Duration = Duration::from_secs(5);

impl Tables {
    /// The tables named `table` (inet and bridge), matching traffic from
    /// `bridge` and TAPs named `tap_prefix*`, changed with the `nft` program.
    pub fn new(nft: &str, table: &str, bridge: &str, tap_prefix: &str) -> Tables {
        Tables {
            nft: nft.to_owned(),
            table: table.to_owned(),
            bridge: bridge.to_owned(),
            tap_prefix: tap_prefix.to_owned(),
            state: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves maps that are still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `vm`'s allowlist epoch now: take it before resolving a name for it
    /// (and before checking that the name is allowed), give it to
    /// `allow_since` with the answer.
    pub fn epoch(&self, vm: Ipv4Addr) -> Epoch {
        self.state().epochs.get(&vm).copied().unwrap_or_default()
    }

    /// Replaces whatever tables of this name exist with empty ones: the
    /// worker rebuilds every VM's elements after this.
    pub async fn reset(&self, dns: SocketAddr) -> Result<(), NetError> {
        let t = &self.table;
        let br = &self.bridge;
        let (dns_ip, dns_port) = (dns.ip(), dns.port());
        let pfx = &self.tap_prefix;
        let script = format!(
            r#"add table inet {t}
delete table inet {t}
add table bridge {t}
delete table bridge {t}
table inet {t} {{
  set vms {{ type ipv4_addr; counter; }}
  set allow {{ type ipv4_addr . ipv4_addr; flags timeout; }}
  chain forward {{ type filter hook forward priority -10; policy accept;
    iifname "{br}" jump vm_egress
  }}
  chain input {{ type filter hook input priority -10; policy accept;
    iifname "{br}" jump vm_to_host
  }}
  chain vm_egress {{
    ct state established,related accept
    ip saddr . ip daddr @allow accept
    ip saddr @vms drop
    drop
  }}
  chain vm_to_host {{
    ip daddr {dns_ip} udp dport {dns_port} accept
    ip saddr @vms drop
    drop
  }}
}}
table bridge {t} {{
  set ports {{ type ifname . ipv4_addr; }}
  chain prerouting {{ type filter hook prerouting priority -200; policy accept;
    iifname "{pfx}*" ether type ip iifname . ip saddr != @ports drop
    iifname "{pfx}*" ether type arp iifname . arp saddr ip != @ports drop
    iifname "{pfx}*" ether type ip6 drop
  }}
}}
"#
        );
        self.state().known.clear();
        self.run("creating the egress tables", &script).await
    }

    /// Removes both tables (tests and benches clean up with it).
    pub async fn remove(&self) -> Result<(), NetError> {
        let t = &self.table;
        self.run(
            "removing the egress tables",
            &format!(
                "add table inet {t}\ndelete table inet {t}\nadd table bridge {t}\ndelete table bridge {t}\n"
            ),
        )
        .await
    }

    /// Makes `addr` a VM behind `tap`: its drops are counted, its TAP may
    /// send from it. Adding an element that exists changes nothing.
    pub async fn add_vm(&self, tap: &str, addr: Ipv4Addr) -> Result<(), NetError> {
        let t = &self.table;
        self.run(
            "adding a VM to the egress tables",
            &format!(
                "add element inet {t} vms {{ {addr} }}\nadd element bridge {t} ports {{ \"{tap}\" . {addr} }}\n"
            ),
        )
        .await
    }

    /// Forgets a VM: its address, its TAP binding and every destination
    /// it was allowed. Elements already gone are not an error.
    pub async fn remove_vm(&self, tap: &str, addr: Ipv4Addr) -> Result<(), NetError> {
        let t = &self.table;
        self.forget_allowed(addr).await?;
        for (what, element) in [
            (format!("inet {t} vms"), addr.to_string()),
            (format!("bridge {t} ports"), format!("\"{tap}\" . {addr}")),
        ] {
            // Deleted one by one: a batch fails whole if one is missing.
            if let Err(e) = self
                .run(
                    "removing a VM from the egress tables",
                    &format!("delete element {what} {{ {element} }}\n"),
                )
                .await
                && !e.is_missing_element()
            {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Allows `vm` to reach each of `dests` for its own number of seconds,
    /// counted from now, and returns once every one of them is in the
    /// kernel's set: the forwarder passes the answer on, and the VM
    /// connects, right after. A new destination is added; one allowed
    /// already is renewed only if the answer extends it (nft leaves an
    /// existing element's timeout alone on `add`, so a renewal adds,
    /// deletes and adds again in one atomic batch: there is no moment
    /// without it). A destination that another call (the worker's own
    /// lookup, or an answer to another query) is installing right now is
    /// waited for, not taken as done: its batch may still be running.
    pub async fn allow(&self, vm: Ipv4Addr, dests: &[(Ipv4Addr, u32)]) -> Result<(), NetError> {
        self.allow_since(vm, self.epoch(vm), dests).await.map(drop)
    }

    /// `allow`, for an answer to a lookup started in `epoch`: if `vm`'s
    /// allowlist has been cleared since, it adds nothing and returns
    /// `false` (the name may no longer be allowed; ask again).
    pub async fn allow_since(
        &self,
        vm: Ipv4Addr,
        epoch: Epoch,
        dests: &[(Ipv4Addr, u32)],
    ) -> Result<bool, NetError> {
        // One element per destination (an answer may repeat one): its
        // longest TTL.
        let mut dests = dests.to_vec();
        dests.sort_by(|a, b| (a.0, b.1).cmp(&(b.0, a.1)));
        dests.dedup_by_key(|d| d.0);
        // If a batch this call waited for failed, its entries are gone (or
        // abandoned), and the next round installs them itself.
        for _ in 0..3 {
            let Some(pending) = self.install(vm, epoch, &dests).await? else {
                return Ok(false);
            };
            let mut all_in = true;
            for mut other in pending {
                all_in &= other.wait_for(|done| *done).await.is_ok();
            }
            if all_in {
                return Ok(true);
            }
        }
        Err(NetError::Nft {
            what: "allowing resolved addresses",
            stderr: "concurrent batches installing the same addresses kept failing".into(),
        })
    }

    /// Runs the batch that adds or renews what of `dests` needs it; the
    /// other batches still installing the rest (waited for by `allow`);
    /// `None` if `epoch` is over.
    async fn install(
        &self,
        vm: Ipv4Addr,
        epoch: Epoch,
        dests: &[(Ipv4Addr, u32)],
    ) -> Result<Option<Vec<watch::Receiver<bool>>>, NetError> {
        let now = Instant::now();
        let (done, installed) = watch::channel(false);
        let (mut fresh, mut renew, mut pending) = (Vec::new(), Vec::new(), Vec::new());
        {
            let mut state = self.state();
            if state.epochs.get(&vm).copied().unwrap_or_default() != epoch {
                return Ok(None);
            }
            // Registered under the lock that checked the epoch: clearing
            // the allowlist waits for this batch (see `forget_allowed`).
            let known = &mut state.known;
            known.retain(|_, a| a.until > now && !a.abandoned());
            for &(d, ttl) in dests {
                let secs = ttl.clamp(1, MAX_ALLOW_SECS);
                let until = now + Duration::from_secs(u64::from(secs));
                match known.get(&(vm, d)) {
                    Some(old) if until <= old.until + RENEW_SLACK => {
                        if !*old.installed.borrow() {
                            pending.push(old.installed.clone());
                        }
                        continue;
                    }
                    Some(_) => renew.push((d, secs)),
                    None => fresh.push((d, secs)),
                }
                known.insert(
                    (vm, d),
                    Allowed {
                        until,
                        installed: installed.clone(),
                    },
                );
            }
        }
        let t = &self.table;
        let timed = |l: &[(Ipv4Addr, u32)]| {
            l.iter()
                .map(|(d, secs)| format!("{vm} . {d} timeout {secs}s"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut script = String::new();
        if !fresh.is_empty() {
            script.push_str(&format!(
                "add element inet {t} allow {{ {} }}\n",
                timed(&fresh)
            ));
        }
        if !renew.is_empty() {
            let keys: Vec<String> = renew.iter().map(|(d, _)| format!("{vm} . {d}")).collect();
            let timed = timed(&renew);
            script.push_str(&format!(
                "add element inet {t} allow {{ {timed} }}\ndelete element inet {t} allow {{ {} }}\nadd element inet {t} allow {{ {timed} }}\n",
                keys.join(", ")
            ));
        }
        if script.is_empty() {
            return Ok(Some(pending));
        }
        // Dropped half-way (the caller was cancelled), `done` goes without
        // `true` and the entries count as abandoned.
        match self.run("allowing resolved addresses", &script).await {
            Ok(()) => {
                done.send_replace(true);
                Ok(Some(pending))
            }
            Err(e) => {
                // Unknown state: the next answer installs them again (and
                // whoever waits on this batch, at once).
                self.state()
                    .known
                    .retain(|_, a| !a.installed.same_channel(&installed));
                Err(e)
            }
        }
    }

    /// The destinations `vm` may reach now.
    pub async fn allowed(&self, vm: Ipv4Addr) -> Result<Vec<Ipv4Addr>, NetError> {
        let json = self
            .read(&["list", "set", "inet", &self.table, "allow"])
            .await?;
        Ok(set_elements(&json)
            .filter_map(|e| {
                let pair = e.get("concat")?.as_array()?;
                let src: Ipv4Addr = pair.first()?.as_str()?.parse().ok()?;
                let dst: Ipv4Addr = pair.get(1)?.as_str()?.parse().ok()?;
                (src == vm).then_some(dst)
            })
            .collect())
    }

    /// Removes every destination `vm` was allowed, and starts its next
    /// epoch: answers to lookups started before add nothing, and the
    /// batches of those already adding are waited for, so that what they
    /// add is listed and removed here. An element can expire between the
    /// listing and the delete, so a failed batch is listed again (a few
    /// times at most).
    pub async fn forget_allowed(&self, vm: Ipv4Addr) -> Result<(), NetError> {
        let running: Vec<watch::Receiver<bool>> = {
            let mut state = self.state();
            let epoch = state.epochs.entry(vm).or_default();
            epoch.0 += 1;
            let mut running = Vec::new();
            state.known.retain(|(v, _), a| {
                if *v != vm {
                    return true;
                }
                if !*a.installed.borrow() {
                    running.push(a.installed.clone());
                }
                false
            });
            running
        };
        for mut batch in running {
            // Failed or done, its elements are in the listing below.
            let _ = batch.wait_for(|done| *done).await;
        }
        let mut last = None;
        for _ in 0..3 {
            let dests = self.allowed(vm).await?;
            if dests.is_empty() {
                return Ok(());
            }
            let elems: Vec<String> = dests.iter().map(|d| format!("{vm} . {d}")).collect();
            match self
                .run(
                    "forgetting allowed addresses",
                    &format!(
                        "delete element inet {} allow {{ {} }}\n",
                        self.table,
                        elems.join(", ")
                    ),
                )
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if e.is_missing_element() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(NetError::Nft {
            what: "forgetting allowed addresses",
            stderr: String::new(),
        }))
    }

    /// Packets dropped so far from each VM (its element's counter), all
    /// in one listing: metrics are read for every VM about once a second,
    /// and one process per VM would not scale.
    pub async fn dropped(&self) -> Result<HashMap<Ipv4Addr, u64>, NetError> {
        let json = self
            .read(&["list", "set", "inet", &self.table, "vms"])
            .await?;
        Ok(set_elements(&json)
            .filter_map(|e| {
                let elem = e.get("elem")?;
                let addr: Ipv4Addr = elem.get("val")?.as_str()?.parse().ok()?;
                Some((addr, elem.get("counter")?.get("packets")?.as_u64()?))
            })
            .collect())
    }

    async fn run(&self, what: &'static str, script: &str) -> Result<(), NetError> {
        run_tool(&self.nft, &["-f", "-"], Some(script))
            .await?
            .map(drop)
            .map_err(|stderr| NetError::Nft { what, stderr })
    }

    async fn read(&self, args: &[&str]) -> Result<serde_json::Value, NetError> {
        let what = "reading the egress tables";
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        let out = run_tool(&self.nft, &all, None)
            .await?
            .map_err(|stderr| NetError::Nft { what, stderr })?;
        serde_json::from_slice(&out).map_err(|e| NetError::Nft {
            what,
            stderr: format!("nft printed JSON this worker cannot read: {e}"),
        })
    }
}

/// The `elem` entries of every set (or element listing) in `nft -j` output:
/// each is either a bare value or `{"elem": {"val": …, "counter": …}}`;
/// this yields the `val` (or the bare value) for lists and the whole
/// object for counters, so callers look up what they need.
fn set_elements(json: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    json.get("nftables")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("set")?.get("elem")?.as_array())
        .flatten()
        .flat_map(|e| {
            // Counters live beside the value; concatenations inside it.
            let val = e.get("elem").and_then(|x| x.get("val"));
            [Some(e), val].into_iter().flatten()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// A stand-in `nft` that takes 300 ms over a batch and then records it
    /// as applied (one line in `applied`), or fails if `fail` exists (once);
    /// its listings are empty, and counted in `listed`.
    fn slow_nft(dir: &Path) -> PathBuf {
        let path = dir.join("nft");
        let d = dir.display();
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nif [ \"$1\" = -j ]; then echo '{{\"nftables\": []}}'; echo listed >> {d}/listed; exit 0; fi\n\
                 cat >/dev/null\ntouch {d}/started\nsleep 0.3\n\
                 if [ -e {d}/fail ]; then rm {d}/fail; echo refused >&2; exit 1; fi\n\
                 echo applied >> {d}/applied\n"
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn applied(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("applied"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Starts `tables.allow(vm, d)` and returns once its nft is running.
    async fn first_allow(
        tables: &Tables,
        dir: &Path,
        vm: Ipv4Addr,
        d: Ipv4Addr,
    ) -> tokio::task::JoinHandle<Result<(), NetError>> {
        let t = tables.clone();
        let first = tokio::spawn(async move { t.allow(vm, &[(d, 300)]).await });
        while !dir.join("started").exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        first
    }

    #[tokio::test]
    async fn an_answer_waits_for_the_batch_already_adding_its_address() {
        let dir = tempfile::tempdir().unwrap();
        let nft = slow_nft(dir.path());
        let tables = Tables::new(nft.to_str().unwrap(), "t", "br0", "pcrt");
        let (vm, d) = (Ipv4Addr::new(10, 77, 0, 9), Ipv4Addr::new(198, 18, 0, 11));
        // The worker's own lookup is adding the address when the VM's
        // query is answered with it: the answer must not go out before
        // the element is in the set (the VM's SYN would be dropped).
        let first = first_allow(&tables, dir.path(), vm, d).await;
        tables.allow(vm, &[(d, 300)]).await.unwrap();
        assert_eq!(applied(dir.path()), 1, "allowed before the batch applied");
        first.await.unwrap().unwrap();
        assert_eq!(applied(dir.path()), 1, "one batch for both");
        // Once in, it is known: no batch at all.
        tables.allow(vm, &[(d, 300)]).await.unwrap();
        assert_eq!(applied(dir.path()), 1);
    }

    #[tokio::test]
    async fn when_the_batch_waited_for_fails_the_waiter_installs_it() {
        let dir = tempfile::tempdir().unwrap();
        let nft = slow_nft(dir.path());
        std::fs::write(dir.path().join("fail"), "").unwrap();
        let tables = Tables::new(nft.to_str().unwrap(), "t", "br0", "pcrt");
        let (vm, d) = (Ipv4Addr::new(10, 77, 0, 9), Ipv4Addr::new(198, 18, 0, 11));
        let first = first_allow(&tables, dir.path(), vm, d).await;
        tables.allow(vm, &[(d, 300)]).await.unwrap();
        assert_eq!(applied(dir.path()), 1, "the waiter ran its own batch");
        assert!(first.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_lookup_older_than_a_cleared_allowlist_allows_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let nft = slow_nft(dir.path());
        let tables = Tables::new(nft.to_str().unwrap(), "t", "br0", "pcrt");
        let (vm, d) = (Ipv4Addr::new(10, 77, 0, 9), Ipv4Addr::new(198, 18, 0, 11));
        // A lookup starts; a generation takes the domain away (or the VM
        // is deleted) before its answer comes.
        let epoch = tables.epoch(vm);
        tables.forget_allowed(vm).await.unwrap();
        assert!(!tables.allow_since(vm, epoch, &[(d, 300)]).await.unwrap());
        assert_eq!(applied(dir.path()), 0, "a stale answer added an element");
        // A lookup of the new epoch allows.
        let epoch = tables.epoch(vm);
        assert!(tables.allow_since(vm, epoch, &[(d, 300)]).await.unwrap());
        assert_eq!(applied(dir.path()), 1);
    }

    #[tokio::test]
    async fn clearing_an_allowlist_waits_for_the_batch_adding_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let nft = slow_nft(dir.path());
        let tables = Tables::new(nft.to_str().unwrap(), "t", "br0", "pcrt");
        let (vm, d) = (Ipv4Addr::new(10, 77, 0, 9), Ipv4Addr::new(198, 18, 0, 11));
        let adding = first_allow(&tables, dir.path(), vm, d).await;
        tables.forget_allowed(vm).await.unwrap();
        // Listed (and so deleted) only after the add applied.
        assert_eq!(applied(dir.path()), 1, "listed before the add applied");
        assert!(dir.path().join("listed").exists());
        adding.await.unwrap().unwrap();
    }
}
