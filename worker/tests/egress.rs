//! Egress that follows the push, for real: network namespaces, nftables,
//! a bridge, dnsmasq standing in for the internet's DNS and TCP listeners
//! standing in for its servers, and a veth whose far end is the "guest".
//!
//! Topology (per test, uniquely named namespaces, removed by a guard):
//! ```text
//!  guest ns            host ns (worker's egress runs here)        internet ns
//!  eth0 ──veth── <tap> ─ br0 10.77.0.1/24        up0 198.18.0.1 ── wan0 198.18.0.2
//!  (VM address)          forwarder 10.77.0.1:53   ip_forward        dnsmasq :53
//!                        nft tables                                 listeners .10 .11 .12 :8080
//! ```
//! Needs root, `nft`, `ip` and `dnsmasq`; without them each test prints
//! SKIP and passes (CI runs as root with scripts/install-deps.sh).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use simple_dns::rdata::RData;
use simple_dns::{Packet, RCODE};
use tokio_util::sync::CancellationToken;
use worker::dto::VmId;
use worker::net::{Egress, NetConfig};

const ALLOWED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const WILD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
const INTERNET_DNS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PORT: u16 = 8080;

fn skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root".into());
    }
    for tool in ["nft", "ip", "dnsmasq"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is not installed (scripts/install-deps.sh)"));
        }
    }
    None
}

macro_rules! require_root_and_tools {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("SKIP: egress tests need root, nft, ip and dnsmasq: {why}");
            return;
        }
    };
}

/// Runs a command that must succeed; its standard output.
fn sh<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three namespaces and what runs in them; dropping it kills dnsmasq and
/// removes the namespaces (and so every link and table in them).
struct Net {
    host: String,
    internet: String,
    guest: String,
    dnsmasq: Option<std::process::Child>,
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        for ns in [&self.host, &self.internet, &self.guest] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Net {
    fn new() -> Net {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("pcr6-{}-{n}", std::process::id());
        let mut net = Net {
            host: format!("{base}-h"),
            internet: format!("{base}-i"),
            guest: format!("{base}-g"),
            dnsmasq: None,
        };
        let (h, i) = (net.host.clone(), net.internet.clone());
        for ns in [&net.host, &net.internet, &net.guest] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&["ip", "-n", &h, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &h, "addr", "add", "10.77.0.1/24", "dev", "br0"]);
        sh(&["ip", "-n", &h, "link", "set", "br0", "up"]);
        sh(&[
            "ip", "-n", &h, "link", "add", "up0", "type", "veth", "peer", "name", "wan0", "netns",
            &i,
        ]);
        sh(&["ip", "-n", &h, "addr", "add", "198.18.0.1/24", "dev", "up0"]);
        sh(&["ip", "-n", &h, "link", "set", "up0", "up"]);
        for a in [
            "198.18.0.2/24",
            "198.18.0.10/24",
            "198.18.0.11/24",
            "198.18.0.12/24",
        ] {
            sh(&["ip", "-n", &i, "addr", "add", a, "dev", "wan0"]);
        }
        sh(&["ip", "-n", &i, "link", "set", "wan0", "up"]);
        sh(&[
            "ip",
            "-n",
            &i,
            "route",
            "add",
            "10.77.0.0/24",
            "via",
            "198.18.0.1",
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &h,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        // The internet: fixed records, a TTL long enough for a test, and
        // gone.test that does not exist.
        let dnsmasq = Command::new("ip")
            .args([
                "netns",
                "exec",
                &i,
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
            ])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=198.18.0.2",
            ])
            .args(["--user=root", "--pid-file=", "--local-ttl=300"])
            .args([
                "--address=/allowed.test/198.18.0.10",
                "--address=/other.test/198.18.0.11",
            ])
            .args(["--address=/wild.test/198.18.0.12", "--address=/gone.test/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("dnsmasq");
        net.dnsmasq = Some(dnsmasq);
        // Servers on the internet: each answers its own address and closes.
        let internet = net.internet.clone();
        std::thread::spawn(move || {
            enter(&internet);
            for a in [ALLOWED, OTHER, WILD] {
                let l = TcpListener::bind((a, PORT)).unwrap();
                std::thread::spawn(move || {
                    for s in l.incoming().flatten() {
                        use std::io::Write;
                        let _ = (&s).write_all(a.to_string().as_bytes());
                    }
                });
            }
        })
        .join()
        .unwrap();
        let ready = in_ns(&net.internet, || {
            (0..100).any(|_| {
                let ok = query(SocketAddr::from((INTERNET_DNS, 53)), "allowed.test")
                    .is_ok_and(|(rc, a)| rc == RCODE::NoError && a == [ALLOWED]);
                if !ok {
                    std::thread::sleep(Duration::from_millis(50));
                }
                ok
            })
        });
        assert!(ready, "dnsmasq did not come up");
        net
    }

    /// Only the host namespace with its bridge (no internet, no guest).
    fn bare() -> Net {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let host = format!("pcr6-{}-{n}-h", std::process::id());
        let net = Net {
            internet: format!("{host}-unused-i"),
            guest: format!("{host}-unused-g"),
            host,
            dnsmasq: None,
        };
        sh(&["ip", "netns", "add", &net.host]);
        sh(&[
            "ip", "-n", &net.host, "link", "add", "br0", "type", "bridge",
        ]);
        net
    }

    fn config(&self) -> NetConfig {
        NetConfig::new(
            "br0".into(),
            "10.77.0.0/24".parse().unwrap(),
            SocketAddr::from((INTERNET_DNS, 53)),
        )
    }

    /// Plugs the guest namespace in as VM `id`: its veth's host end gets
    /// the TAP name the worker uses, so `attach` finds it and bridges it.
    fn plug_guest(&self, id: &VmId) {
        let tap = self.config().tap().tap_name(id);
        sh(&[
            "ip",
            "-n",
            &self.host,
            "link",
            "add",
            &tap,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &self.guest,
        ]);
    }

    /// Gives the guest its address once the worker has chosen it.
    fn address_guest(&self, addr: Ipv4Addr) {
        let g = &self.guest;
        sh(&[
            "ip",
            "-n",
            g,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", g, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", g, "route", "add", "default", "via", "10.77.0.1"]);
    }

    /// The elements of the worker's sets (VMs, TAP bindings, allowed
    /// destinations), as nft prints them.
    fn elements(&self) -> String {
        let mut all = String::new();
        for (family, set) in [("inet", "vms"), ("inet", "allow"), ("bridge", "ports")] {
            let h = &self.host;
            let text = sh(&[
                "ip",
                "netns",
                "exec",
                h,
                "nft",
                "list",
                "set",
                family,
                "procurator",
                set,
            ]);
            all.push_str(text.split_once("elements = ").map_or("", |(_, e)| e));
        }
        all
    }

    fn link_exists(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.host, "link", "show", "dev", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

/// Moves this thread into network namespace `ns`.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap();
}

/// Runs `f` on a thread inside `ns` (sockets it makes live there).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .unwrap()
}

/// The worker's egress, started inside the host namespace on a thread of
/// its own (its nft and ip children and its sockets are then there too).
struct HostEgress {
    egress: Egress,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostEgress {
    fn start(net: &Net, run_dir: &std::path::Path) -> HostEgress {
        let (ns, config, run_dir) = (net.host.clone(), net.config(), run_dir.to_owned());
        let stop = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let token = stop.clone();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let started = Egress::start(config, &run_dir, token.clone()).await;
                let ok = started.is_ok();
                tx.send(started).unwrap();
                if ok {
                    token.cancelled().await;
                }
            });
        });
        let egress = rx.recv().unwrap().expect("egress starts");
        HostEgress {
            egress,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HostEgress {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One A query; the answer's rcode and addresses.
fn query(server: SocketAddr, name: &str) -> Result<(RCODE, Vec<Ipv4Addr>), String> {
    query_from(Ipv4Addr::UNSPECIFIED, server, name)
}

/// One A query sent from address `from`.
fn query_from(
    from: Ipv4Addr,
    server: SocketAddr,
    name: &str,
) -> Result<(RCODE, Vec<Ipv4Addr>), String> {
    let sock = UdpSocket::bind((from, 0)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    sock.send_to(&worker::net::dns::a_query(0x5eed, name).unwrap(), server)
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).map_err(|e| format!("no answer: {e}"))?;
    let p = Packet::parse(&buf[..n]).map_err(|e| e.to_string())?;
    let addrs = p
        .answers
        .iter()
        .filter_map(|rr| match &rr.rdata {
            RData::A(a) => Some(Ipv4Addr::from(a.address)),
            _ => None,
        })
        .collect();
    Ok((p.rcode(), addrs))
}

/// Connects to `to:PORT`; what the server said, or `None` if it could not.
fn connect(to: Ipv4Addr) -> Option<String> {
    use std::io::Read;
    let target = SocketAddr::V4(SocketAddrV4::new(to, PORT));
    let mut s = TcpStream::connect_timeout(&target, Duration::from_millis(800)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(800))).ok()?;
    let mut said = String::new();
    s.read_to_string(&mut said).ok()?;
    Some(said)
}

/// Waits up to 5 s for `f` to hold.
fn wait(what: &str, mut f: impl FnMut() -> bool) {
    testkit::wait_until(Duration::from_secs(5), what, || f().then_some(()));
}

fn forwarder() -> SocketAddr {
    SocketAddr::from((GATEWAY, 53))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_reaches_only_what_its_domains_resolve_to() {
    require_root_and_tools!();
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let host = HostEgress::start(&net, dir.path());
    let id = VmId::new_v7();
    net.plug_guest(&id);
    let domains = vec![
        "allowed.test".to_owned(),
        "*.wild.test".to_owned(),
        "gone.test".to_owned(),
    ];
    let vm = host.egress.attach(&id, &domains).await.unwrap();
    assert!(vm.address.octets()[..3] == [10, 77, 0] && vm.address != GATEWAY);
    net.address_guest(vm.address);
    let g = net.guest.clone();

    // An allowed name resolves through the forwarder and connects.
    let (rc, addrs) = in_ns(&g, || query(forwarder(), "allowed.test")).unwrap();
    assert_eq!((rc, addrs), (RCODE::NoError, vec![ALLOWED]));
    assert_eq!(
        in_ns(&g, || connect(ALLOWED)).as_deref(),
        Some("198.18.0.10")
    );
    // A wildcard allows names below it, not its apex.
    let (rc, addrs) = in_ns(&g, || query(forwarder(), "a.wild.test")).unwrap();
    assert_eq!((rc, addrs), (RCODE::NoError, vec![WILD]));
    assert!(in_ns(&g, || connect(WILD)).is_some());
    assert_eq!(
        in_ns(&g, || query(forwarder(), "wild.test")).unwrap().0,
        RCODE::Refused
    );
    // Garbage gets FORMERR, and the forwarder serves on.
    let garbage = in_ns(&g, || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        sock.send_to(b"\x12\x34 not a DNS message", forwarder())
            .unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    });
    assert_eq!(&garbage[..2], b"\x12\x34", "the reply keeps the id");
    assert_eq!(garbage[3] & 0x0f, 1, "FORMERR");
    // A name that is not allowed gets no answer.
    let (rc, addrs) = in_ns(&g, || query(forwarder(), "other.test")).unwrap();
    assert_eq!((rc, addrs), (RCODE::Refused, vec![]));
    // Nor does a direct connection to an address no allowed name gave.
    assert_eq!(in_ns(&g, || connect(OTHER)), None);
    // DNS to any other resolver is dropped.
    let direct = in_ns(&g, || {
        query(SocketAddr::from((INTERNET_DNS, 53)), "other.test")
    });
    assert!(
        direct.is_err(),
        "DNS around the forwarder answered: {direct:?}"
    );
    // An allowed name that does not exist: the VM runs on, without it.
    assert_eq!(
        in_ns(&g, || query(forwarder(), "gone.test")).unwrap().0,
        RCODE::NameError
    );
    // Drops are counted for this VM.
    let dropped = host.egress.dropped_packets(&id).await.unwrap();
    assert!(dropped >= 2, "dropped {dropped}");

    // A forged source (another address in the subnet) does not get out.
    sh(&[
        "ip",
        "-n",
        &g,
        "addr",
        "add",
        "10.77.0.250/24",
        "dev",
        "eth0",
    ]);
    let forged = in_ns(&g, || {
        query_from(Ipv4Addr::new(10, 77, 0, 250), forwarder(), "allowed.test")
    });
    assert!(
        forged.is_err(),
        "a forged source reached the forwarder: {forged:?}"
    );

    // A new generation adds a domain: allowed at once, nothing restarted.
    let mut more = domains.clone();
    more.push("other.test".into());
    host.egress.update(&id, &more).await.unwrap();
    let (rc, addrs) = in_ns(&g, || query(forwarder(), "other.test")).unwrap();
    assert_eq!((rc, addrs), (RCODE::NoError, vec![OTHER]));
    assert!(in_ns(&g, || connect(OTHER)).is_some());
    // And one that takes it away again: the address is no longer allowed.
    host.egress.update(&id, &domains).await.unwrap();
    assert_eq!(
        in_ns(&g, || query(forwarder(), "other.test")).unwrap().0,
        RCODE::Refused
    );
    assert_eq!(in_ns(&g, || connect(OTHER)), None);
    // The plain name kept is resolved again by the worker itself.
    wait("allowed.test re-allowed", || {
        in_ns(&g, || connect(ALLOWED)).is_some()
    });

    // A worker restart: tables reset, the VM attached again keeps its
    // address and gets its rules back.
    drop(host);
    let host = HostEgress::start(&net, dir.path());
    assert!(
        !net.elements().contains(&vm.address.to_string()),
        "a restart starts from empty tables"
    );
    let again = host.egress.attach(&id, &domains).await.unwrap();
    assert_eq!(again, vm, "the recorded address and TAP are kept");
    wait("rules restored after a restart", || {
        in_ns(&g, || connect(ALLOWED)).is_some()
    });
    assert_eq!(
        in_ns(&g, || query(forwarder(), "other.test")).unwrap().0,
        RCODE::Refused
    );

    // Deleting the VM removes its rules, its TAP and its record.
    host.egress.detach(&id).await.unwrap();
    let left = net.elements();
    assert!(!left.contains(&vm.address.to_string()), "{left}");
    assert!(!net.link_exists(&vm.tap));
    assert!(!dir.path().join(format!("net/{id}.json")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_are_distinct_and_a_missing_bridge_is_refused() {
    require_root_and_tools!();
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let host = HostEgress::start(&net, dir.path());
    let mut seen = std::collections::HashSet::new();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let id = VmId::new_v7();
        let vm = host.egress.attach(&id, &[]).await.unwrap();
        assert!(seen.insert(vm.address), "{} given twice", vm.address);
        assert!(
            net.link_exists(&vm.tap),
            "the worker made the TAP {}",
            vm.tap
        );
        ids.push(id);
    }
    for id in &ids {
        host.egress.detach(id).await.unwrap();
    }
    assert_eq!(net.elements(), "", "every VM's elements are gone");
    drop(host);

    let mut config = net.config();
    config.bridge = "nobr0".into();
    let ns = net.host.clone();
    let run_dir = dir.path().to_owned();
    let err = in_ns(&ns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(Egress::start(config, &run_dir, CancellationToken::new()))
            .unwrap_err()
            .to_string()
    });
    assert!(
        err.contains("nobr0") && err.contains("does not exist"),
        "{err}"
    );
}

/// The real `worker` binary, run inside the host namespace (`ip netns
/// exec` execs it, so the pid is the worker's), on ch-sim.
struct NetWorker {
    proc: testkit::Proc,
    ns: String,
}

impl NetWorker {
    fn start(net: &Net, dir: &std::path::Path) -> NetWorker {
        let w = testkit::services::WorkerArgs::new("egress", &dir.join("run"), &dir.join("store"))
            .args(["--bridge", "br0", "--vm-subnet", "10.77.0.0/24"])
            .args([
                "--dns-upstream",
                "198.18.0.2:53",
                "--shutdown-timeout-ms",
                "500",
            ]);
        let inner = w.command();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net.host])
            .arg(inner.get_program())
            .args(inner.get_args());
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        let proc = testkit::Proc::spawn("worker", cmd, testkit::Log::File(dir.join("worker.log")));
        NetWorker {
            proc,
            ns: net.host.clone(),
        }
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let cli = testkit::bin("pcr-worker-test").display().to_string();
        let mut all = vec!["ip", "netns", "exec", &self.ns, &cli];
        all.extend(["--addr", &self.proc.addr, "--json"]);
        all.extend_from_slice(args);
        serde_json::from_str(&sh(&all)).unwrap()
    }

    fn stop(mut self) {
        let st = self
            .proc
            .terminate(Duration::from_secs(10))
            .expect("worker exits");
        assert!(st.success(), "worker exit status {st}");
    }
}

#[test]
fn the_worker_binary_networks_its_vms_and_follows_their_generations() {
    require_root_and_tools!();
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let _reaper = testkit::Reaper::new(&dir.path().join("run"));
    testkit::fixtures::make_store(&dir.path().join("store"));
    let spec = |hash: &str, domains: &[&str]| {
        let mut s = testkit::fixtures::spec_json("web", "console=ttyS0");
        s["contentHash"] = hash.into();
        s["networkAllowedDomains"] = domains.iter().map(|d| (*d).to_owned()).collect();
        let path = dir.path().join(format!("{hash}.json"));
        std::fs::write(&path, s.to_string()).unwrap();
        path.display().to_string()
    };
    let w = NetWorker::start(&net, dir.path());
    let created = w.json(&["create-vm", "--spec", &spec("h1", &["allowed.test"])]);
    let id: VmId = created[0]["id"].as_str().unwrap().parse().unwrap();
    let pid = created[0]["pid"].as_u64().unwrap();
    let record: worker::net::VmNet = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("run/net/{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(record.tap, net.config().tap().tap_name(&id));
    // The worker made the TAP, on the bridge, and CH was given it.
    let link = Command::new("ip")
        .args(["-n", &net.host, "link", "show", "dev", &record.tap])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&link.stdout).contains("master br0"));
    let socket = dir.path().join(format!("run/vm/{id}.sock"));
    let info = Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(&socket)
        .arg("http://localhost/api/v1/vm.info")
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["config"]["net"][0]["tap"], record.tap.as_str());
    assert_eq!(info["config"]["net"][0]["mac"], record.mac.as_str());
    // The guest is told its address, gateway and DNS server on its command line.
    let ip = format!(
        "ip={}::10.77.0.1:255.255.255.0:::off:10.77.0.1",
        record.address
    );
    assert_eq!(
        info["config"]["payload"]["cmdline"],
        format!("console=ttyS0 {ip}").as_str()
    );
    // Its address is a VM and its allowed name was resolved by the worker.
    wait("allowed.test resolved at create", || {
        let e = net.elements();
        e.contains(&record.address.to_string()) && e.contains("198.18.0.10")
    });
    let details = w.json(&["info", id.as_str()]);
    assert_eq!(details["metrics"]["egressDroppedPackets"], 0);

    // A generation that only adds a domain: same VM, same process.
    let again = w.json(&[
        "create-vm",
        "--spec",
        &spec("h2", &["allowed.test", "other.test"]),
    ]);
    assert_eq!(again[0]["id"], id.as_str());
    assert_eq!(again[0]["pid"].as_u64(), Some(pid));
    wait("other.test allowed without a restart", || {
        net.elements().contains("198.18.0.11")
    });

    // A worker restart: the VM is adopted and its rules come back.
    w.stop();
    let w = NetWorker::start(&net, dir.path());
    wait("rules restored after a restart", || {
        let e = net.elements();
        e.contains(&record.address.to_string())
            && e.contains("198.18.0.10")
            && e.contains("198.18.0.11")
    });
    let list = w.json(&["list-vms"]);
    assert_eq!(list[0]["pid"].as_u64(), Some(pid), "adopted, not restarted");

    // Deleting the VM removes its rules, its TAP and its record.
    w.json(&["delete-vm", id.as_str()]);
    assert_eq!(net.elements(), "");
    assert!(!net.link_exists(&record.tap));
    assert!(!dir.path().join(format!("run/net/{id}.json")).exists());
    w.stop();
}

#[test]
fn a_new_answer_renews_an_allowed_address_for_its_ttl() {
    require_root_and_tools!();
    let ns = Net::bare();
    let expires = in_ns(&ns.host, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let tables = worker::net::nft::Tables::new("nft", "procurator", "br0", "pcrt");
            tables.reset(forwarder()).await.unwrap();
            let vm = Ipv4Addr::new(10, 77, 0, 9);
            let d = Ipv4Addr::new(192, 0, 2, 1);
            tables.allow(vm, &[(d, 2)]).await.unwrap();
            // Renewed with a longer TTL, and given twice in one answer.
            tables.allow(vm, &[(d, 600), (d, 300)]).await.unwrap();
            // TTL 0 would mean "never expires" to nft: it is one second.
            tables
                .allow(vm, &[(Ipv4Addr::new(192, 0, 2, 2), 0)])
                .await
                .unwrap();
            assert_eq!(tables.allowed(vm).await.unwrap().len(), 2);
        });
        sh(&["nft", "-j", "list", "set", "inet", "procurator", "allow"])
    });
    let json: serde_json::Value = serde_json::from_str(&expires).unwrap();
    let elems = json["nftables"][1]["set"]["elem"].as_array().unwrap();
    let timeout_of = |ip: &str| {
        elems
            .iter()
            .find(|e| e["elem"]["val"]["concat"][1] == ip)
            .map(|e| e["elem"]["timeout"].as_u64().unwrap())
    };
    assert_eq!(timeout_of("192.0.2.1"), Some(600), "{json}");
    assert_eq!(timeout_of("192.0.2.2"), Some(1), "{json}");
}

/// With a VM user (`--vm-user`), CH runs unprivileged and opens its TAP by
/// name: the kernel lets only the TAP's owner do that, so the worker makes
/// each TAP the VM user's.
#[test]
fn a_vm_users_tap_belongs_to_it() {
    require_root_and_tools!();
    let net = Net::bare();
    let h = &net.host;
    sh(&["ip", "-n", h, "addr", "add", "10.77.0.1/24", "dev", "br0"]);
    sh(&["ip", "-n", h, "link", "set", "br0", "up"]);
    let mut config = net.config();
    config.tap_owner = Some(worker::vmm::user::VmOwner {
        uid: 4242,
        gid: 4343,
    });
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().to_owned();
    let tap = in_ns(h, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let egress = Egress::start(config, &run_dir, CancellationToken::new())
                    .await
                    .unwrap();
                egress.attach(&VmId::new_v7(), &[]).await.unwrap().tap
            })
    });
    // `ip netns exec` mounts the namespace's own /sys.
    let read = |what: &str| {
        sh(&[
            "ip",
            "netns",
            "exec",
            h,
            "cat",
            &format!("/sys/class/net/{tap}/{what}"),
        ])
        .trim()
        .to_owned()
    };
    assert_eq!(
        (read("owner"), read("group")),
        ("4242".into(), "4343".into())
    );
}
