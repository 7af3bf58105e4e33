//! ch-sim's VM: CH v53's API state rules (design §10 and the recording in
//! `tests/data/ch-v53-conformance.jsonl`), its error chains, the defaults
//! `vm.info` fills in, growing counters and a guest that writes to its
//! serial file at boot.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

/// Injected faults (process-wide, plus per VM from the kernel command line).
#[derive(Debug, Default, Clone)]
pub(crate) struct Faults {
    fail: Vec<(String, u16)>,
    hang: BTreeSet<String>,
    pub boot_delay_ms: u64,
    pub poweroff_after_ms: Option<u64>,
    pub tick_ms: Option<u64>,
    /// Lines per tick (default 1): a guest that prints without end, as fast
    /// as a test needs.
    pub tick_lines: Option<u64>,
    /// The guest prints its ready line this many ms after each boot.
    pub ready_ms: Option<u64>,
    /// The ready line (default [`READY_LINE`]); one command-line word, so
    /// it has no spaces.
    pub ready_line: Option<String>,
    /// The guest crashes this many ms after each boot.
    pub crash_after_ms: Option<u64>,
}

/// What the simulated guest prints when it is ready, unless told otherwise.
pub(crate) const READY_LINE: &str = "READY";

/// What a crashing Linux guest's last words look like on its console.
pub(crate) const PANIC_LINE: &str =
    "[sim] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b";

impl Faults {
    /// `endpoint:status[,endpoint:status…]`.
    pub(crate) fn add_fail_list(&mut self, list: &str) -> Result<(), String> {
        for item in list.split(',').filter(|s| !s.is_empty()) {
            let (ep, st) = item
                .split_once(':')
                .ok_or(format!("fault {item:?} is not endpoint:status"))?;
            let st: u16 = st
                .parse()
                .map_err(|_| format!("fault {item:?}: {st:?} is not a status"))?;
            self.fail.push((ep.to_owned(), st));
        }
        Ok(())
    }
    pub(crate) fn add_hang_list(&mut self, list: &str) {
        self.hang
            .extend(list.split(',').filter(|s| !s.is_empty()).map(str::to_owned));
    }
    pub(crate) fn fail_status(&self, endpoint: &str) -> Option<u16> {
        self.fail
            .iter()
            .find(|(e, _)| e == endpoint)
            .map(|(_, s)| *s)
    }
    pub(crate) fn hangs(&self, endpoint: &str) -> bool {
        self.hang.contains(endpoint)
    }

    /// Faults and guest behaviour a VM carries on its kernel command line:
    /// `ch_sim.KEY=VALUE`, or `pcr.sim.KEY=VALUE` (the same keys; the
    /// spelling a Nix module or test writes for the guest's behaviour:
    /// `pcr.sim.ready=200`, `pcr.sim.ready_line=UP`, `pcr.sim.crash_after_ms=N`).
    fn from_cmdline(cmdline: &str) -> Faults {
        let mut f = Faults::default();
        for tok in cmdline.split_whitespace() {
            let Some((k, v)) = tok
                .strip_prefix("ch_sim.")
                .or_else(|| tok.strip_prefix("pcr.sim."))
                .and_then(|t| t.split_once('='))
            else {
                continue;
            };
            match k {
                "fail" => {
                    let _ = f.add_fail_list(v);
                }
                "hang" => f.add_hang_list(v),
                "boot_delay_ms" => f.boot_delay_ms = v.parse().unwrap_or(0),
                "poweroff_after_ms" => f.poweroff_after_ms = v.parse().ok(),
                "tick_ms" => f.tick_ms = v.parse().ok(),
                "tick_lines" => f.tick_lines = v.parse().ok(),
                "ready" => f.ready_ms = v.parse().ok(),
                "ready_line" if !v.is_empty() => f.ready_line = Some(v.to_owned()),
                "crash_after_ms" => f.crash_after_ms = v.parse().ok(),
                _ => {}
            }
        }
        f
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Created,
    Running,
    Paused,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Created => "Created",
            State::Running => "Running",
            State::Paused => "Paused",
        }
    }
}

/// The subset of VmConfig ch-sim checks; parsing the body into it gives
/// serde's own messages for malformed input, as CH (also serde) does.
#[derive(Deserialize)]
#[allow(dead_code)]
struct CreateBody {
    payload: Payload,
    #[serde(default)]
    cpus: Option<Cpus>,
    #[serde(default)]
    memory: Option<Memory>,
    #[serde(default)]
    disks: Option<Vec<Disk>>,
    #[serde(default)]
    net: Option<Vec<Net>>,
    #[serde(default)]
    serial: Option<Console>,
    #[serde(default)]
    console: Option<Console>,
}
#[derive(Deserialize)]
#[allow(dead_code)]
struct Payload {
    #[serde(default)]
    kernel: Option<String>,
    #[serde(default)]
    initramfs: Option<String>,
    #[serde(default)]
    cmdline: Option<String>,
}
#[derive(Deserialize)]
#[allow(dead_code)]
struct Cpus {
    boot_vcpus: u8,
    max_vcpus: u8,
}
#[derive(Deserialize)]
#[allow(dead_code)]
struct Memory {
    size: u64,
}
#[derive(Deserialize)]
#[allow(dead_code)]
struct Disk {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    readonly: Option<bool>,
    #[serde(default)]
    image_type: Option<ImageType>,
    #[serde(default)]
    backing_files: Option<bool>,
}
/// The `NetConfig` fields the worker sets (`tap`, `mac`) and those CH
/// fills in, with CH's types: a value of another type fails
/// deserialization as in CH. ch-sim opens no TAP and carries no frames.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Net {
    #[serde(default)]
    tap: Option<String>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    host_mac: Option<String>,
    #[serde(default)]
    ip: Option<std::net::IpAddr>,
    #[serde(default)]
    mask: Option<std::net::IpAddr>,
    #[serde(default)]
    mtu: Option<u16>,
    #[serde(default)]
    num_queues: Option<usize>,
    #[serde(default)]
    queue_size: Option<u16>,
    #[serde(default)]
    id: Option<String>,
}
/// CH's `ImageType`: another value fails deserialization, as in CH.
#[derive(Deserialize)]
enum ImageType {
    FixedVhd,
    Raw,
    Qcow2,
    Vhdx,
    Unknown,
}
#[derive(Deserialize)]
#[allow(dead_code)]
struct Console {
    mode: String,
    #[serde(default)]
    file: Option<String>,
}

struct Vm {
    /// The config as given to vm.create.
    config: Value,
    state: State,
    booted_once: bool,
    faults: Faults,
    /// The disk files a booted VM holds open and locked.
    disks: Option<super::disk::OpenDisks>,
    /// Running time accumulated before the current run (counters grow with it).
    run_before: Duration,
    running_since: Option<Instant>,
}

impl Vm {
    fn run_ms(&self) -> u64 {
        (self.run_before + self.running_since.map_or(Duration::ZERO, |t| t.elapsed())).as_millis()
            as u64
    }
    fn stop_clock(&mut self) {
        if let Some(t) = self.running_since.take() {
            self.run_before += t.elapsed();
        }
    }
    fn serial_file(&self) -> Option<PathBuf> {
        let s = &self.config["serial"];
        (s["mode"] == "File")
            .then(|| s["file"].as_str().map(PathBuf::from))
            .flatten()
    }
    fn kernel(&self) -> &str {
        self.config["payload"]["kernel"].as_str().unwrap_or("")
    }
    fn cmdline(&self) -> &str {
        self.config["payload"]["cmdline"].as_str().unwrap_or("")
    }
}

/// What the HTTP layer does with a request.
pub(crate) enum Outcome {
    Reply(u16, Option<Value>),
    /// Never answer (an injected hang).
    Hang,
    /// Answer with this status, then exit the process with this code.
    ExitAfterReply(u16, i32),
}

pub(crate) struct Sim {
    socket: PathBuf,
    name: String,
    faults: Faults,
    vm: Option<Vm>,
    /// Bumped at every boot and shutdown, so timers of an older boot stop.
    boot_gen: u64,
}

const GETS: &[&str] = &["vmm.ping", "vm.info", "vm.counters"];
const PUTS: &[&str] = &[
    "vm.create",
    "vm.boot",
    "vm.shutdown",
    "vm.reboot",
    "vm.pause",
    "vm.resume",
    "vm.delete",
    "vm.power-button",
    "vmm.shutdown",
];
/// Endpoints of CH's API that ch-sim knows but does not simulate.
const OTHER_PUTS: &[&str] = &[
    "vm.resize",
    "vm.resize-zone",
    "vm.resize-disk",
    "vm.add-device",
    "vm.add-user-device",
    "vm.add-disk",
    "vm.add-fs",
    "vm.add-pmem",
    "vm.add-net",
    "vm.add-vdpa",
    "vm.add-vsock",
    "vm.remove-device",
    "vm.snapshot",
    "vm.coredump",
    "vm.restore",
    "vm.receive-migration",
    "vm.send-migration",
    "vm.nmi",
];

fn chain(items: &[&str]) -> Option<Value> {
    Some(json!(items))
}

/// `vm.pause` (Running → Paused) and `vm.resume` (Paused → Running) as CH
/// v53 answers them: `clock` starts or stops the VM's run time; a VM
/// already in `to` is an invalid transition, any other is not running.
fn switch(vm: Option<&mut Vm>, from: State, to: State, clock: fn(&mut Vm)) -> Outcome {
    let (failed, verb) = if to == State::Paused {
        ("The VM could not be paused", "pause")
    } else {
        ("The VM could not resume", "resume")
    };
    match vm {
        Some(vm) if vm.state == from => {
            vm.state = to;
            clock(vm);
            Outcome::Reply(204, None)
        }
        Some(vm) if vm.state == to => err(
            500,
            &[
                "Error from API",
                failed,
                &format!("Cannot {verb} VM"),
                &format!("Failed to {verb} migratable component"),
                &format!("Invalid transition: InvalidStateTransition({to:?}, {to:?})"),
            ],
        ),
        _ => err(500, &["Error from API", failed, "VM is not running"]),
    }
}

fn err(status: u16, items: &[&str]) -> Outcome {
    Outcome::Reply(status, chain(items))
}

const NOENT: &str = "No such file or directory (os error 2)";

impl Sim {
    pub(crate) fn new(socket: PathBuf, faults: Faults) -> Self {
        let name = socket
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Sim {
            socket,
            name,
            faults,
            vm: None,
            boot_gen: 0,
        }
    }

    fn injected(&self, endpoint: &str) -> Option<Outcome> {
        let vmf = self.vm.as_ref().map(|v| &v.faults);
        if self.faults.hangs(endpoint) || vmf.is_some_and(|f| f.hangs(endpoint)) {
            return Some(Outcome::Hang);
        }
        let status = self
            .faults
            .fail_status(endpoint)
            .or_else(|| vmf.and_then(|f| f.fail_status(endpoint)))?;
        let msg = format!("ch-sim: injected failure of {endpoint}");
        Some(Outcome::Reply(status, Some(json!(["Error from API", msg]))))
    }

    fn boot_delay(&self) -> u64 {
        self.faults
            .boot_delay_ms
            .max(self.vm.as_ref().map_or(0, |v| v.faults.boot_delay_ms))
    }

    /// One API request against the current state (no waiting inside).
    pub(crate) fn handle(&mut self, method: &str, endpoint: &str, body: &[u8]) -> Outcome {
        let known_get = GETS.contains(&endpoint);
        let known_put = PUTS.contains(&endpoint) || OTHER_PUTS.contains(&endpoint);
        match (method, known_get, known_put) {
            (_, false, false) => return err(404, &["Not Found"]),
            ("GET", true, _) | ("PUT", _, true) => {}
            _ => return err(400, &["Bad Request"]),
        }
        if let Some(o) = self.injected(endpoint) {
            return o;
        }
        match endpoint {
            "vmm.ping" => Outcome::Reply(
                200,
                Some(
                    json!({"build_version": format!("v{}", super::VERSION), "version": super::VERSION,
                    "pid": std::process::id(), "features": ["io_uring", "kvm"]}),
                ),
            ),
            "vmm.shutdown" => Outcome::ExitAfterReply(200, 0),
            "vm.create" => self.create(body),
            "vm.boot" => self.boot(),
            "vm.shutdown" => match self.vm.as_mut() {
                Some(vm) if matches!(vm.state, State::Running | State::Paused) => {
                    vm.state = State::Created;
                    vm.disks = None;
                    vm.stop_clock();
                    self.boot_gen += 1;
                    Outcome::Reply(204, None)
                }
                _ => err(
                    500,
                    &[
                        "Error from API",
                        "The VM could not shutdown",
                        "VM is not running",
                    ],
                ),
            },
            "vm.reboot" => match self.vm.as_ref().map(|v| v.state) {
                None => err(
                    404,
                    &[
                        "Error from API",
                        "The VM could not reboot",
                        "VM is not created",
                    ],
                ),
                Some(State::Running) => {
                    self.boot_gen += 1;
                    self.guest_boot_line();
                    Outcome::Reply(204, None)
                }
                Some(_) => err(
                    500,
                    &[
                        "Error from API",
                        "The VM could not reboot",
                        "VM is not running",
                    ],
                ),
            },
            "vm.pause" => switch(
                self.vm.as_mut(),
                State::Running,
                State::Paused,
                Vm::stop_clock,
            ),
            "vm.resume" => switch(self.vm.as_mut(), State::Paused, State::Running, |vm| {
                vm.running_since = Some(Instant::now());
            }),
            "vm.delete" => {
                self.vm = None;
                self.boot_gen += 1;
                Outcome::Reply(204, None)
            }
            "vm.power-button" => match self.vm.as_ref().map(|v| v.state) {
                Some(State::Running) => {
                    self.append_serial("[sim] ACPI power button: powering off");
                    Outcome::ExitAfterReply(204, 0)
                }
                _ => err(
                    500,
                    &[
                        "Error from API",
                        "Error triggering power button",
                        "VM is not running",
                    ],
                ),
            },
            "vm.info" => match &self.vm {
                None => err(
                    404,
                    &[
                        "Error from API",
                        "The VM info is not available",
                        "VM is not created",
                    ],
                ),
                Some(vm) => Outcome::Reply(200, Some(info_body(vm))),
            },
            "vm.counters" => match &self.vm {
                Some(vm) if matches!(vm.state, State::Running | State::Paused) => {
                    Outcome::Reply(200, Some(counters(vm)))
                }
                _ => err(
                    500,
                    &[
                        "Error from API",
                        "The VM info is not available",
                        "VM is not running",
                    ],
                ),
            },
            _ => err(500, &["Error from API", "ch-sim: endpoint not simulated"]),
        }
    }

    fn create(&mut self, body: &[u8]) -> Outcome {
        let parsed: CreateBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Reply(
                    400,
                    Some(json!(["Failed to deserialize JSON", e.to_string()])),
                );
            }
        };
        if self.vm.is_some() {
            return err(
                500,
                &[
                    "Error from API",
                    "The VM could not be created",
                    "VM is already created",
                ],
            );
        }
        if let Some(Console {
            mode,
            file: Some(file),
        }) = &parsed.serial
            && mode == "File"
            && let Err(e) = std::fs::File::create(file)
        {
            let e = e.to_string();
            return err(
                500,
                &[
                    "Error from API",
                    "The VM could not be created",
                    "Error creating console devices",
                    "Error creating console device",
                    &e,
                ],
            );
        }
        let config: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let cmdline = parsed.payload.cmdline.clone().unwrap_or_default();
        self.vm = Some(Vm {
            config,
            state: State::Created,
            booted_once: false,
            faults: Faults::from_cmdline(&cmdline),
            disks: None,
            run_before: Duration::ZERO,
            running_since: None,
        });
        Outcome::Reply(204, None)
    }

    fn boot(&mut self) -> Outcome {
        let Some(vm) = self.vm.as_mut() else {
            return err(
                404,
                &[
                    "Error from API",
                    "The VM could not boot",
                    "VM config is missing",
                ],
            );
        };
        if vm.state != State::Created {
            return err(
                500,
                &[
                    "Error from API",
                    "The VM could not boot",
                    "VM is already created",
                ],
            );
        }
        if std::fs::File::open(vm.kernel()).is_err() {
            return err(
                500,
                &[
                    "Error from API",
                    "The VM could not boot",
                    "Cannot open kernel file",
                    NOENT,
                ],
            );
        }
        if let Some(initrd) = vm.config["payload"]["initramfs"].as_str()
            && std::fs::File::open(initrd).is_err()
        {
            return err(
                500,
                &[
                    "Error from API",
                    "The VM could not boot",
                    "Cannot open initramfs file",
                    NOENT,
                ],
            );
        }
        match super::disk::open_disks(&vm.config) {
            Ok(open) => vm.disks = Some(open),
            Err(chain) => {
                let mut items = vec!["Error from API", "The VM could not boot"];
                items.extend(chain.iter().map(String::as_str));
                return err(500, &items);
            }
        }
        vm.state = State::Running;
        vm.booted_once = true;
        vm.running_since = Some(Instant::now());
        self.boot_gen += 1;
        self.guest_boot_line();
        Outcome::Reply(204, None)
    }

    /// The serial file is truncated at every boot, as CH does.
    fn guest_boot_line(&self) {
        let Some(vm) = &self.vm else { return };
        if let Some(path) = vm.serial_file() {
            let mut line = format!(
                "[sim] {} booted kernel={} cmdline={}\n",
                self.name,
                vm.kernel(),
                vm.cmdline()
            );
            if let Some(guest) = super::guest::boot_line(vm.kernel(), vm.cmdline()) {
                line.push_str(&guest);
                line.push('\n');
            }
            let _ = std::fs::write(path, line);
        }
    }

    fn append_serial(&self, line: &str) {
        let Some(path) = self.vm.as_ref().and_then(Vm::serial_file) else {
            return;
        };
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }

    fn running_gen(&self) -> Option<u64> {
        self.vm
            .as_ref()
            .filter(|v| v.state == State::Running)
            .map(|_| self.boot_gen)
    }
}

/// Serves one request: waits out an injected boot delay without holding
/// the state, then applies the request and starts the guest's timers.
pub(super) async fn dispatch(
    sim: &Arc<Mutex<Sim>>,
    method: &str,
    endpoint: &str,
    body: &[u8],
) -> Outcome {
    if method == "PUT" && endpoint == "vm.boot" {
        let delay = sim.lock().map(|s| s.boot_delay()).unwrap_or(0);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
    let (outcome, timers) = {
        let Ok(mut s) = sim.lock() else {
            return err(500, &["Error from API", "ch-sim: state poisoned"]);
        };
        let before = s.boot_gen;
        let o = s.handle(method, endpoint, body);
        let booted = s.boot_gen != before && s.running_gen().is_some();
        let timers = booted.then(|| {
            let vmf = s.vm.as_ref().map(|v| v.faults.clone()).unwrap_or_default();
            (
                s.boot_gen,
                vmf.poweroff_after_ms.or(s.faults.poweroff_after_ms),
                vmf.tick_ms.or(s.faults.tick_ms),
                vmf.tick_lines.unwrap_or(1).max(1),
                s.socket.clone(),
                vmf,
            )
        });
        (o, timers)
    };
    if let Some((gen_at_boot, poweroff, tick, tick_lines, socket, vmf)) = timers {
        if let Some(ms) = vmf.ready_ms {
            let sim = sim.clone();
            let line = vmf.ready_line.unwrap_or_else(|| READY_LINE.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let Ok(s) = sim.lock() else { return };
                // Only the boot that set the timer, and only while it runs:
                // a paused guest prints nothing.
                if s.running_gen() == Some(gen_at_boot) {
                    s.append_serial(&line);
                }
            });
        }
        if let Some(ms) = vmf.crash_after_ms {
            let sim = sim.clone();
            let socket = socket.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let Ok(s) = sim.lock() else { return };
                if s.running_gen() == Some(gen_at_boot) {
                    s.append_serial(PANIC_LINE);
                    // Design §10: a guest crash ends CH as a power-off does,
                    // exit 0 and socket removed; only the console tells.
                    super::exit_now(&socket, 0, true);
                }
            });
        }
        if let Some(ms) = poweroff {
            let sim = sim.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let Ok(s) = sim.lock() else { return };
                if s.running_gen() == Some(gen_at_boot) {
                    s.append_serial("[sim] reboot: Power down");
                    // A guest power-off ends CH: exit 0, socket removed.
                    super::exit_now(&socket, 0, true);
                }
            });
        }
        if let Some(ms) = tick.filter(|ms| *ms > 0) {
            let sim = sim.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let Ok(s) = sim.lock() else { return };
                    match s.running_gen() {
                        Some(g) if g == gen_at_boot => {
                            let lines: Vec<String> = (0..tick_lines)
                                .map(|_| {
                                    n += 1;
                                    format!("[sim] tick {n}")
                                })
                                .collect();
                            s.append_serial(&lines.join("\n"));
                        }
                        // Paused guests are silent; a new boot has its own timer.
                        None if s.boot_gen == gen_at_boot => {}
                        _ => return,
                    }
                }
            });
        }
    }
    outcome
}

/// `vm.info`'s body: the config with CH v53's defaults filled in, as in the
/// recording (disk ids and image types appear once the VM has booted).
fn info_body(vm: &Vm) -> Value {
    let c = &vm.config;
    let booted = vm.booted_once;
    let cpus = &c["cpus"];
    let mut cfg = json!({
        "cpus": {
            "boot_vcpus": cpus.get("boot_vcpus").cloned().unwrap_or(json!(1)),
            "max_vcpus": cpus.get("max_vcpus").cloned().unwrap_or(json!(1)),
            "kvm_hyperv": false, "max_phys_bits": 46, "features": {"amx": false},
            "nested": true, "core_scheduling": "Vm", "profile": "Host"
        },
        "memory": {
            "size": c["memory"].get("size").cloned().unwrap_or(json!(536_870_912u64)),
            "mergeable": false, "hotplug_method": "Acpi", "shared": false, "hugepages": false,
            "prefault": false, "reserve": false, "thp": true
        },
        "payload": c["payload"].clone(),
        "rng": {"pci_segment": 0, "src": c["rng"].get("src").cloned().unwrap_or(json!("/dev/urandom"))},
        "serial": c.get("serial").cloned().unwrap_or(json!({"mode": "Null"})),
        "console": {"mode": c["console"].get("mode").cloned().unwrap_or(json!("Tty")), "pci_segment": 0},
        "debug_console": {"mode": "Off", "iobase": 233},
        "pvpanic": false, "iommu": false, "watchdog": false, "landlock_enable": false
    });
    if let Some(disks) = c["disks"].as_array() {
        let filled: Vec<Value> = disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let path = d["path"].as_str().unwrap_or("");
                let mut o = json!({
                    "pci_segment": 0, "path": path, "readonly": d.get("readonly").cloned().unwrap_or(json!(false)),
                    "direct": false, "num_queues": 1, "queue_size": 128, "vhost_user": false,
                    "disable_io_uring": false, "disable_aio": false,
                    "backing_files": d.get("backing_files").cloned().unwrap_or(json!(false)), "sparse": true,
                    "image_type": super::disk::reported_image_type(d, booted),
                    "lock_granularity": "ByteRange"
                });
                let id = d.get("id").cloned().or_else(|| booted.then(|| json!(format!("_disk{i}"))));
                if let Some(id) = id {
                    o["id"] = id;
                }
                o
            })
            .collect();
        cfg["disks"] = json!(filled);
    }
    if let Some(nets) = c["net"].as_array() {
        let filled: Vec<Value> = nets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut o = n.clone();
                for (k, v) in [
                    ("ip", json!("192.168.249.1")),
                    ("mask", json!("255.255.255.0")),
                    ("num_queues", json!(2)),
                    ("queue_size", json!(256)),
                    ("pci_segment", json!(0)),
                ] {
                    if o.get(k).is_none() {
                        o[k] = v;
                    }
                }
                if booted && o.get("id").is_none() {
                    o["id"] = json!(format!("_net{}", i + disks_len(c)));
                }
                o
            })
            .collect();
        cfg["net"] = json!(filled);
    }
    let mut body = json!({"config": cfg, "state": vm.state.name(), "memory_actual_size": cfg["memory"]["size"]});
    if matches!(vm.state, State::Running | State::Paused) {
        let mut tree = serde_json::Map::new();
        for i in 0..disks_len(c) {
            let id = format!("_disk{i}");
            tree.insert(id.clone(), json!({"id": id, "resources": [], "children": [], "pci_bdf": format!("0000:00:{:02x}.0", i + 2)}));
        }
        tree.insert(
            "__rng".into(),
            json!({"id": "__rng", "resources": [], "children": [], "pci_bdf": "0000:00:01.0"}),
        );
        body["device_tree"] = Value::Object(tree);
    }
    body
}

fn disks_len(c: &Value) -> usize {
    c["disks"].as_array().map_or(0, Vec::len)
}

/// Per-device counters that grow with the guest's running time.
fn counters(vm: &Vm) -> Value {
    let ms = vm.run_ms();
    let mut out = serde_json::Map::new();
    for i in 0..disks_len(&vm.config) {
        let ops = ms / 4;
        out.insert(
            format!("_disk{i}"),
            json!({"read_bytes": ops * 4096, "write_bytes": ops * 1024, "read_ops": ops, "write_ops": ops / 4,
                "read_latency_min": u64::MAX, "read_latency_max": u64::MAX, "read_latency_avg": u64::MAX / 10_000,
                "write_latency_min": u64::MAX, "write_latency_max": u64::MAX, "write_latency_avg": u64::MAX / 10_000}),
        );
    }
    if let Some(nets) = vm.config["net"].as_array() {
        for i in 0..nets.len() {
            out.insert(
                format!("_net{}", i + disks_len(&vm.config)),
                json!({"rx_bytes": ms * 100, "tx_bytes": ms * 60, "rx_frames": ms / 2, "tx_frames": ms / 3}),
            );
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim_with_files() -> (tempfile::TempDir, Sim, String) {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(dir.path().join("disk.raw"), [0u8; 4096]).unwrap();
        let cfg = json!({"payload": {"kernel": kernel, "cmdline": "console=ttyS0 ch_sim.tick_ms=5"},
            "cpus": {"boot_vcpus": 1, "max_vcpus": 1}, "memory": {"size": 134217728},
            "disks": [{"path": dir.path().join("disk.raw")}],
            "serial": {"mode": "File", "file": dir.path().join("serial.log")}, "console": {"mode": "Off"}})
        .to_string();
        let sim = Sim::new(dir.path().join("vm-1.sock"), Faults::default());
        (dir, sim, cfg)
    }

    fn status(o: &Outcome) -> u16 {
        match o {
            Outcome::Reply(s, _) | Outcome::ExitAfterReply(s, _) => *s,
            Outcome::Hang => 0,
        }
    }

    #[test]
    fn net_entries_are_type_checked_filled_in_and_counted() {
        let (_dir, mut sim, cfg) = sim_with_files();
        let mut bad: Value = serde_json::from_str(&cfg).unwrap();
        bad["net"] = json!([{"tap": 7}]);
        let o = sim.handle("PUT", "vm.create", bad.to_string().as_bytes());
        assert_eq!(status(&o), 400, "a tap that is not a string");
        bad["net"] = json!([{"tap": "pcrt0", "ip": "not-an-ip"}]);
        let o = sim.handle("PUT", "vm.create", bad.to_string().as_bytes());
        assert_eq!(status(&o), 400, "an ip that is not an address");
        let mut good: Value = serde_json::from_str(&cfg).unwrap();
        good["net"] = json!([{"tap": "pcrt0123456789a", "mac": "02:01:02:03:04:05"}]);
        assert_eq!(
            status(&sim.handle("PUT", "vm.create", good.to_string().as_bytes())),
            204
        );
        assert_eq!(status(&sim.handle("PUT", "vm.boot", b"")), 204);
        let Outcome::Reply(200, Some(info)) = sim.handle("GET", "vm.info", b"") else {
            panic!("vm.info")
        };
        let net = &info["config"]["net"][0];
        assert_eq!(net["tap"], "pcrt0123456789a");
        assert_eq!(net["mac"], "02:01:02:03:04:05");
        assert_eq!(
            net["id"], "_net1",
            "ids follow the disks, as CH numbers them"
        );
        let Outcome::Reply(200, Some(c)) = sim.handle("GET", "vm.counters", b"") else {
            panic!("vm.counters")
        };
        assert!(c.get("_net1").is_some(), "{c}");
    }

    #[test]
    fn lifecycle_counters_and_serial() {
        let (dir, mut sim, cfg) = sim_with_files();
        assert_eq!(status(&sim.handle("PUT", "vm.create", cfg.as_bytes())), 204);
        assert_eq!(status(&sim.handle("PUT", "vm.boot", b"")), 204);
        let serial = std::fs::read_to_string(dir.path().join("serial.log")).unwrap();
        assert!(serial.starts_with("[sim] vm-1 booted kernel="), "{serial}");
        assert!(serial.contains("cmdline=console=ttyS0"), "{serial}");
        std::thread::sleep(Duration::from_millis(20));
        let Outcome::Reply(200, Some(c1)) = sim.handle("GET", "vm.counters", b"") else {
            panic!()
        };
        std::thread::sleep(Duration::from_millis(20));
        let Outcome::Reply(200, Some(c2)) = sim.handle("GET", "vm.counters", b"") else {
            panic!()
        };
        assert!(
            c2["_disk0"]["read_bytes"].as_u64() > c1["_disk0"]["read_bytes"].as_u64(),
            "counters grow"
        );
        assert_eq!(status(&sim.handle("PUT", "vm.pause", b"")), 204);
        let Outcome::Reply(200, Some(info)) = sim.handle("GET", "vm.info", b"") else {
            panic!()
        };
        assert_eq!(info["state"], "Paused");
        assert_eq!(info["config"]["disks"][0]["id"], "_disk0");
        assert_eq!(status(&sim.handle("PUT", "vm.shutdown", b"")), 204);
        assert!(matches!(
            sim.handle("PUT", "vmm.shutdown", b""),
            Outcome::ExitAfterReply(200, 0)
        ));
    }

    #[test]
    fn guest_behaviour_comes_from_either_cmdline_prefix() {
        let f = Faults::from_cmdline(
            "console=ttyS0 pcr.sim.ready=200 pcr.sim.ready_line=UP ch_sim.crash_after_ms=9",
        );
        assert_eq!(f.ready_ms, Some(200));
        assert_eq!(f.ready_line.as_deref(), Some("UP"));
        assert_eq!(f.crash_after_ms, Some(9));
        let f =
            Faults::from_cmdline("pcr.sim.ready=soon pcr.sim.ready_line= pcr.sim.boot_delay_ms=5");
        assert_eq!((f.ready_ms, f.ready_line, f.boot_delay_ms), (None, None, 5));
        let f = Faults::from_cmdline("pcr.simulated.ready=1 xpcr.sim.ready=1");
        assert_eq!(f.ready_ms, None, "only the two prefixes count");
    }

    #[test]
    fn faults_from_cmdline_apply_after_create() {
        let (_dir, mut sim, cfg) = sim_with_files();
        let cfg = cfg.replace(
            "ch_sim.tick_ms=5",
            "ch_sim.fail=vm.boot:503 ch_sim.hang=vm.pause",
        );
        assert_eq!(status(&sim.handle("PUT", "vm.create", cfg.as_bytes())), 204);
        let Outcome::Reply(503, Some(body)) = sim.handle("PUT", "vm.boot", b"") else {
            panic!()
        };
        assert_eq!(
            body,
            json!(["Error from API", "ch-sim: injected failure of vm.boot"])
        );
        assert!(matches!(sim.handle("PUT", "vm.pause", b""), Outcome::Hang));
        // Wrong methods and unknown endpoints are refused before faults.
        assert_eq!(status(&sim.handle("GET", "vm.boot", b"")), 400);
        assert_eq!(status(&sim.handle("GET", "vm.nope", b"")), 404);
    }
}
