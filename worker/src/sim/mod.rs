//! ch-sim's process behaviour: command line, fault settings, the unix-socket
//! HTTP server and the process-level events (vmm.shutdown, guest power-off,
//! SIGTERM, injected death) that end it the way a real CH ends.
//!
//! Faults (env, flag, or per VM on the kernel command line after vm.create):
//! - `CH_SIM_FAIL=vm.boot:500[,…]` / `--sim-fail` / `ch_sim.fail=vm.boot:500`:
//!   that endpoint answers that status with an error chain.
//! - `CH_SIM_HANG=vm.shutdown[,…]` / `--sim-hang` / `ch_sim.hang=…`: never answers.
//! - `CH_SIM_DIE_AFTER_MS=N` / `--sim-die-after-ms`: exits with status 1 after
//!   N ms, leaving its socket behind (a crash).
//! - `CH_SIM_BOOT_DELAY_MS=N` / `--sim-boot-delay-ms` / `ch_sim.boot_delay_ms=N`.
//! - `CH_SIM_NO_SOCKET=1` / `--sim-no-socket`: runs but never opens its socket.
//! - `CH_SIM_POWEROFF_AFTER_MS=N` / `--sim-poweroff-after-ms` /
//!   `ch_sim.poweroff_after_ms=N`: the guest powers off N ms after boot.
//! - `CH_SIM_TICK_MS=N` / `ch_sim.tick_ms=N`: the guest writes a serial line every N ms
//!   (`ch_sim.tick_lines=L`: L lines each time, a guest that floods its console).
//!
//! Guest behaviour, per VM on the kernel command line (`pcr.sim.` or
//! `ch_sim.`, the same keys), counted from each boot or reboot:
//! - `pcr.sim.ready=N`: the guest prints `READY` (or `pcr.sim.ready_line=TEXT`,
//!   one word) on its serial console N ms after boot: what a health check waits for.
//! - `pcr.sim.crash_after_ms=N`: the guest panics N ms after boot: a kernel
//!   panic line on the console, then CH exits 0 and removes its socket, as
//!   the real v53 does when its guest dies (design §10; the recording has no
//!   guest crash, so this follows the design's measured process behaviour).

mod disk;
mod guest;
mod vm;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub(crate) use vm::{Faults, Outcome, Sim};

pub(crate) const VERSION: &str = "53.0.0";

#[derive(Debug, Default)]
struct Args {
    socket: Option<PathBuf>,
    faults: Faults,
    die_after_ms: Option<u64>,
    no_socket: bool,
}

fn parse_args(
    argv: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Args>, String> {
    let mut a = Args::default();
    let num = |k: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("{k}: {v:?} is not a number"))
    };
    if let Some(v) = env("CH_SIM_FAIL") {
        a.faults.add_fail_list(&v)?;
    }
    if let Some(v) = env("CH_SIM_HANG") {
        a.faults.add_hang_list(&v);
    }
    if let Some(v) = env("CH_SIM_DIE_AFTER_MS") {
        a.die_after_ms = Some(num("CH_SIM_DIE_AFTER_MS", &v)?);
    }
    if let Some(v) = env("CH_SIM_BOOT_DELAY_MS") {
        a.faults.boot_delay_ms = num("CH_SIM_BOOT_DELAY_MS", &v)?;
    }
    if let Some(v) = env("CH_SIM_POWEROFF_AFTER_MS") {
        a.faults.poweroff_after_ms = Some(num("CH_SIM_POWEROFF_AFTER_MS", &v)?);
    }
    if let Some(v) = env("CH_SIM_TICK_MS") {
        a.faults.tick_ms = Some(num("CH_SIM_TICK_MS", &v)?);
    }
    a.no_socket = env("CH_SIM_NO_SOCKET").is_some_and(|v| !v.is_empty() && v != "0");
    let mut it = argv.iter().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or(format!("{flag} needs a value"))
        };
        match flag {
            "--version" | "-V" => return Ok(None),
            "--api-socket" => {
                let v = value()?;
                // CH accepts `path=/x[,fd=N]` or a bare path.
                let path = v
                    .split(',')
                    .find_map(|p| p.strip_prefix("path="))
                    .unwrap_or(&v);
                a.socket = Some(PathBuf::from(path));
            }
            "--sim-fail" => a.faults.add_fail_list(&value()?)?,
            "--sim-hang" => a.faults.add_hang_list(&value()?),
            "--sim-die-after-ms" => a.die_after_ms = Some(num(flag, &value()?)?),
            "--sim-boot-delay-ms" => a.faults.boot_delay_ms = num(flag, &value()?)?,
            "--sim-poweroff-after-ms" => a.faults.poweroff_after_ms = Some(num(flag, &value()?)?),
            "--sim-no-socket" => a.no_socket = true,
            // VM arguments of CH's command line are not simulated.
            other => return Err(format!("unsupported argument {other:?}")),
        }
    }
    Ok(Some(a))
}

// `--version` answers on stdout, as cloud-hypervisor does.
#[allow(clippy::print_stdout)]
pub(crate) fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let args = match parse_args(&argv, &|k| std::env::var(k).ok()) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("cloud-hypervisor v{VERSION} (ch-sim)");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ch-sim: {e}");
            return ExitCode::from(1);
        }
    };
    let Some(socket) = args.socket.clone() else {
        eprintln!("ch-sim: --api-socket is required");
        return ExitCode::from(1);
    };
    // One thread: a thousand of these run side by side in the benchmark.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ch-sim: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(serve(socket, args))
}

/// Where the process ends, with CH's exit code.
pub(crate) fn exit_now(socket: &Path, code: i32, remove_socket: bool) -> ! {
    if remove_socket {
        let _ = std::fs::remove_file(socket);
    }
    std::process::exit(code)
}

async fn serve(socket: PathBuf, args: Args) -> ExitCode {
    if let Some(ms) = args.die_after_ms {
        let s = socket.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            eprintln!("ch-sim: dying as asked (CH_SIM_DIE_AFTER_MS={ms})");
            exit_now(&s, 1, false);
        });
    }
    if args.no_socket {
        // Never opens its socket: the worker must time out and kill it.
        std::future::pending::<()>().await;
    }
    if socket.exists() {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            eprintln!(
                "ch-sim: Error: API socket {} is already in use",
                socket.display()
            );
            return ExitCode::from(1);
        }
        // A dead CH's socket (SIGKILL leaves it): replace it, as CH does.
        let _ = std::fs::remove_file(&socket);
    }
    let listener = match tokio::net::UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ch-sim: cannot bind API socket {}: {e}", socket.display());
            return ExitCode::from(1);
        }
    };
    let _ = std::fs::File::create(format!("{}.lock", socket.display()));
    let sim = Arc::new(Mutex::new(Sim::new(socket.clone(), args.faults)));

    let s = socket.clone();
    let shutdown = commands::daemon::shutdown_token();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        exit_now(&s, 0, true);
    });

    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let sim = sim.clone();
        let socket = socket.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| handle(req, sim.clone(), socket.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    sim: Arc<Mutex<Sim>>,
    socket: PathBuf,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let endpoint = path.strip_prefix("/api/v1/").unwrap_or("");
    let outcome = vm::dispatch(&sim, &method, endpoint, &body).await;
    let (status, json) = match outcome {
        Outcome::Reply(status, json) => (status, json),
        Outcome::Hang => std::future::pending().await,
        Outcome::ExitAfterReply(status, code) => {
            let s = socket.clone();
            tokio::spawn(async move {
                // Let hyper flush the answer first.
                tokio::time::sleep(Duration::from_millis(5)).await;
                exit_now(&s, code, true);
            });
            (status, None)
        }
    };
    let mut resp = Response::builder().status(status);
    let body = match json {
        Some(v) => {
            resp = resp.header("Content-Type", "application/json");
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        }
        None => Bytes::new(),
    };
    Ok(resp
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str], env: &[(&str, &str)]) -> Result<Option<Args>, String> {
        let argv: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_args(&argv, &|k| {
            env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn parses_ch_command_line_and_faults() {
        let a = args(&["ch", "--api-socket", "path=/r/x.sock"], &[])
            .unwrap()
            .unwrap();
        assert_eq!(a.socket.as_deref(), Some(Path::new("/r/x.sock")));
        let a = args(
            &["ch", "--api-socket=/r/y.sock", "--sim-fail", "vm.boot:500"],
            &[("CH_SIM_DIE_AFTER_MS", "7")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.socket.as_deref(), Some(Path::new("/r/y.sock")));
        assert_eq!(a.die_after_ms, Some(7));
        assert_eq!(a.faults.fail_status("vm.boot"), Some(500));
        assert!(args(&["ch", "--version"], &[]).unwrap().is_none());
        assert!(args(&["ch", "--kernel", "x"], &[]).is_err());
        assert!(args(&["ch"], &[("CH_SIM_FAIL", "vm.boot")]).is_err());
        let a = args(
            &["ch"],
            &[("CH_SIM_NO_SOCKET", "1"), ("CH_SIM_HANG", "vm.shutdown")],
        )
        .unwrap()
        .unwrap();
        assert!(a.no_socket && a.faults.hangs("vm.shutdown"));
    }
}
