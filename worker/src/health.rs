//! Health checks: a VM whose spec has a `healthCheck` is healthy once a line
//! of its serial console contains `consoleLine`, seen within `deadlineMs` of
//! its boot, and unhealthy when the deadline passes without one or the VM
//! fails. The verdict is final for that VM (a line printed after the
//! deadline does not make it healthy again); a recreated VM is a new VM id
//! with a new watch, so a restart starts from pending. The deadline is wall
//! time from the boot the worker saw (paused time counts: a paused guest
//! is not serving); a reboot the guest starts itself does not reset it.
//! A line is a match when it contains `consoleLine` (guests prefix their
//! output with timestamps and unit names; an exact match would rarely fit).
//!
//! The watch follows the console history the worker keeps (see
//! [`crate::rundir::Console`]), never CH's serial file, and reads only what
//! was added since its last read: a cursor (the history file's inode and an
//! offset) survives the history's rotation, and a line split across two
//! reads is still found (the end of an unfinished line is carried over,
//! at most the line's length). Each scan reads at most
//! [`scan_budget`] bytes, and only pending VMs are scanned, so a guest
//! that floods its console costs the worker a bounded read per sync period
//! and nothing once its verdict is in. A guest that prints the line early
//! only decides its own health: each VM has its own console files.
//!
//! The scan runs in the manager's console-sync sub-task on a copy of the
//! watch; the manager keeps what comes back (the VM table changes only in
//! the manager's loop).

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;

use crate::dto::{Health, HealthCheck};

use crate::rundir::Console;

/// Why one scan did not finish: the watch keeps its verdict (a new one
/// stays in memory when only keeping it on disk failed).
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot read the console history")]
    Read(#[source] io::Error),
    #[error("cannot keep the health verdict in {}", path.display())]
    Write {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

/// Where a VM's check stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pending,
    Healthy { since_ms: u64 },
    Unhealthy { detail: String },
}

/// Finds a needle in a stream of console bytes, line by line: a match
/// never spans a newline, and one split across two chunks is found.
#[derive(Debug, Clone)]
struct LineFinder {
    needle: Vec<u8>,
    /// The end of the unfinished last line, at most `needle.len() - 1` bytes:
    /// all a match that starts in it can use.
    carry: Vec<u8>,
}

impl LineFinder {
    fn new(needle: &str) -> Self {
        LineFinder {
            needle: needle.as_bytes().to_vec(),
            carry: Vec::new(),
        }
    }

    /// Whether a line containing the needle ends or continues in `chunk`.
    fn feed(&mut self, chunk: &[u8]) -> bool {
        let keep = self.needle.len().saturating_sub(1);
        let finder = memchr::memmem::Finder::new(&self.needle);
        let mut rest = chunk;
        loop {
            let nl = memchr::memchr(b'\n', rest);
            let seg = &rest[..nl.unwrap_or(rest.len())];
            if !self.carry.is_empty() {
                // Only a match that starts in the carry is new here.
                let mut joined = self.carry.clone();
                joined.extend_from_slice(&seg[..seg.len().min(keep)]);
                if finder.find(&joined).is_some() {
                    return true;
                }
            }
            if finder.find(seg).is_some() {
                return true;
            }
            match nl {
                Some(i) => {
                    self.carry.clear();
                    rest = &rest[i + 1..];
                }
                None => {
                    if seg.len() >= keep {
                        self.carry.clear();
                    }
                    self.carry
                        .extend_from_slice(&seg[seg.len().saturating_sub(keep)..]);
                    let excess = self.carry.len().saturating_sub(keep);
                    self.carry.drain(..excess);
                    return false;
                }
            }
        }
    }

    /// Forgets the unfinished line (the bytes after it are lost).
    fn reset(&mut self) {
        self.carry.clear();
    }
}

/// How far the watch has read the console history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Cursor {
    /// The inode of the history file `offset` is in; `None` before the first
    /// read, which starts at the oldest output kept (the rotated file).
    ino: Option<u64>,
    offset: u64,
}

/// The most bytes one scan reads: twice the history bound, more than one
/// sync can add (it copies at most the bound), so a scan keeps up with
/// any guest, and no scan reads more.
pub fn scan_budget(console: &Console) -> u64 {
    console.max_bytes.saturating_mul(2)
}

/// One VM's health check: its verdict and how far it has read.
#[derive(Debug, Clone)]
pub struct HealthWatch {
    check: HealthCheck,
    /// Unix ms the VM booted; `None` while it is being created.
    booted_at_ms: Option<u64>,
    verdict: Verdict,
    cursor: Cursor,
    finder: LineFinder,
    /// Console bytes read so far (what the watch has cost).
    bytes_read: u64,
}

/// The text of a persisted verdict: `healthy <ms>` or `unhealthy <detail>`.
fn parse_verdict(text: &str) -> Option<Verdict> {
    let text = text.trim_end_matches('\n');
    if let Some(ms) = text.strip_prefix("healthy ") {
        return ms
            .parse()
            .ok()
            .map(|since_ms| Verdict::Healthy { since_ms });
    }
    text.strip_prefix("unhealthy ").map(|d| Verdict::Unhealthy {
        detail: d.to_owned(),
    })
}

impl HealthWatch {
    /// A check for a VM being created: pending, its deadline not started.
    pub fn new(check: HealthCheck) -> Self {
        let finder = LineFinder::new(&check.console_line);
        HealthWatch {
            check,
            booted_at_ms: None,
            verdict: Verdict::Pending,
            cursor: Cursor::default(),
            finder,
            bytes_read: 0,
        }
    }

    /// The check of a VM a restarted worker adopts: the verdict kept in
    /// `console.health` if there is one, else pending with the deadline
    /// counted from `booted_at_ms` and the history read from its start.
    pub fn adopted(check: HealthCheck, booted_at_ms: u64, console: &Console) -> Self {
        let mut w = HealthWatch::new(check);
        w.booted_at_ms = Some(booted_at_ms);
        if let Some(v) = std::fs::read_to_string(&console.health)
            .ok()
            .and_then(|t| parse_verdict(&t))
        {
            w.verdict = v;
        }
        w
    }

    /// The VM booted at `at_ms`: its deadline runs from now.
    pub fn booted(&mut self, at_ms: u64) {
        self.booted_at_ms = Some(at_ms);
    }

    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// Whether a scan can still change the verdict.
    pub fn wants_scan(&self) -> bool {
        self.verdict == Verdict::Pending && self.booted_at_ms.is_some()
    }

    /// The VM failed: unhealthy, whatever it printed (`error` says why).
    pub fn failed(&mut self, error: &str) {
        self.verdict = Verdict::Unhealthy {
            detail: format!("the VM failed: {error}"),
        };
    }

    /// What `VmStatus` reports: health, detail, healthy-since.
    pub fn report(&self) -> (Health, String, Option<u64>) {
        match &self.verdict {
            Verdict::Pending => (Health::Pending, String::new(), None),
            Verdict::Healthy { since_ms } => (Health::Healthy, String::new(), Some(*since_ms)),
            Verdict::Unhealthy { detail } => (Health::Unhealthy, detail.clone(), None),
        }
    }

    /// Syncs the console and reads what it gained, as of `now_ms` (taken
    /// before the sync, so what the guest wrote by then is read): healthy
    /// when the line is there; unhealthy when the deadline had passed at
    /// `now_ms` and everything was read without finding it. A new verdict
    /// is kept in `console.health`.
    pub fn scan(&mut self, console: &Console, now_ms: u64) -> Result<(), HealthError> {
        let Some(booted) = self
            .booted_at_ms
            .filter(|_| self.verdict == Verdict::Pending)
        else {
            return Ok(());
        };
        let budget = scan_budget(console);
        let (found, caught_up) = console
            .sync_then(|c| self.read_new(c, budget))
            .map_err(HealthError::Read)?
            .map_err(HealthError::Read)?;
        let deadline = booted.saturating_add(self.check.deadline_ms);
        self.verdict = if found {
            Verdict::Healthy { since_ms: now_ms }
        } else if caught_up && now_ms >= deadline {
            Verdict::Unhealthy {
                detail: format!(
                    "no {:?} on the console within {} ms",
                    self.check.console_line, self.check.deadline_ms
                ),
            }
        } else {
            return Ok(());
        };
        let text = match &self.verdict {
            Verdict::Healthy { since_ms } => format!("healthy {since_ms}\n"),
            Verdict::Unhealthy { detail } => format!("unhealthy {detail}\n"),
            Verdict::Pending => return Ok(()),
        };
        std::fs::write(&console.health, text).map_err(|source| HealthError::Write {
            path: console.health.clone(),
            source,
        })
    }

    /// Reads the history past the cursor (first what rotation moved out of
    /// the file the cursor was in), at most `budget` bytes; returns whether
    /// the line was found and whether everything was read.
    fn read_new(&mut self, console: &Console, mut budget: u64) -> io::Result<(bool, bool)> {
        let history = match std::fs::File::open(&console.history) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((false, true)),
            Err(e) => return Err(e),
        };
        // Under the sync lock: the history does not grow while it is read.
        let meta = history.metadata()?;
        let (hist_ino, len) = (meta.ino(), meta.len());
        if self.cursor.ino != Some(hist_ino) {
            // The cursor's file was rotated (or nothing was read yet).
            let rotated = match std::fs::File::open(&console.rotated) {
                Ok(f) => {
                    let m = f.metadata()?;
                    Some((f, m.ino(), m.len()))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            let from = match (&rotated, self.cursor.ino) {
                (Some((_, r_ino, _)), Some(ino)) if *r_ino == ino => Some(self.cursor.offset),
                (Some(_), None) => Some(0),
                _ => None,
            };
            match (rotated, from) {
                (Some((r, ino, r_len)), Some(from)) => {
                    let (found, read) = self.read_file(r, r_len, from, budget)?;
                    budget -= read;
                    if found || budget == 0 {
                        self.cursor = Cursor {
                            ino: Some(ino),
                            offset: from + read,
                        };
                        return Ok((found, false));
                    }
                }
                // Rotated twice since the last read: that output is gone.
                _ if self.cursor.ino.is_some() => self.finder.reset(),
                _ => {}
            }
            self.cursor = Cursor {
                ino: Some(hist_ino),
                offset: 0,
            };
        }
        let from = self.cursor.offset;
        let (found, read) = self.read_file(history, len, from, budget)?;
        self.cursor.offset = from + read;
        Ok((found, found || self.cursor.offset >= len))
    }

    /// Feeds `file` (`len` bytes) from `from` to its end, at most `budget`
    /// bytes, to the finder; returns whether it matched and how many bytes
    /// were read.
    fn read_file(
        &mut self,
        file: std::fs::File,
        len: u64,
        from: u64,
        budget: u64,
    ) -> io::Result<(bool, u64)> {
        use std::io::{Seek, SeekFrom};
        let mut file = file;
        file.seek(SeekFrom::Start(from))?;
        let mut limited = file.take(budget);
        // Most scans read one line or none: no 64 KiB buffer for those.
        let size = len.saturating_sub(from).min(budget).clamp(1, 64 * 1024);
        let mut buf = vec![0u8; size as usize];
        let mut read = 0u64;
        loop {
            let n = limited.read(&mut buf)?;
            if n == 0 {
                return Ok((false, read));
            }
            read += n as u64;
            self.bytes_read += n as u64;
            if self.finder.feed(&buf[..n]) {
                return Ok((true, read));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dto::VmId;
    use crate::rundir::{RunDir, VmFileOptions};

    fn check(line: &str, deadline_ms: u64) -> HealthCheck {
        HealthCheck {
            console_line: line.into(),
            deadline_ms,
        }
    }

    /// A run dir whose console histories are bounded at `max` bytes, and
    /// the console of one VM in it.
    fn console(max: u64) -> (tempfile::TempDir, Console) {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::open_with(
            &dir.path().join("run"),
            VmFileOptions {
                console_max_bytes: max,
                ..Default::default()
            },
        )
        .unwrap();
        let c = rd.console(&VmId::new_v7());
        (dir, c)
    }

    /// What the guest writes: appended to CH's serial file.
    fn guest_writes(c: &Console, bytes: &[u8]) {
        testkit::fs::append(&c.serial, bytes);
    }

    fn booted_watch(line: &str, deadline_ms: u64) -> HealthWatch {
        let mut w = HealthWatch::new(check(line, deadline_ms));
        w.booted(1_000);
        w
    }

    #[test]
    fn finder_matches_within_lines_and_across_chunks_only() {
        let mut f = LineFinder::new("READY");
        assert!(!f.feed(b"booting\nRE"));
        assert!(f.feed(b"ADY now\n"), "a match split across two chunks");
        let mut f = LineFinder::new("READY");
        assert!(!f.feed(b"RE\nADY\n"), "a match never spans a newline");
        assert!(!f.feed(b"REA"));
        assert!(!f.feed(b"D"));
        assert!(f.feed(b"Y"), "split over three chunks");
        let mut f = LineFinder::new("READY");
        assert!(
            f.feed(b"[   1.2] systemd: READY=1\r\n"),
            "contained, not equal"
        );
        let mut f = LineFinder::new("x");
        assert!(!f.feed(b"aaa\nbbb"));
        assert!(f.feed(b"\nxyz"));
    }

    #[test]
    fn finder_carries_at_most_the_needle() {
        let mut f = LineFinder::new("READY");
        assert!(!f.feed(&vec![b'a'; 1 << 20]));
        assert!(f.carry.len() <= 4, "{}", f.carry.len());
    }

    #[test]
    fn the_line_within_the_deadline_is_healthy_and_kept() {
        let (_d, c) = console(1 << 20);
        let mut w = booted_watch("READY", 30_000);
        guest_writes(&c, b"[sim] booted\n");
        w.scan(&c, 1_100).unwrap();
        assert_eq!(w.verdict(), &Verdict::Pending);
        guest_writes(&c, b"READY\n");
        w.scan(&c, 1_350).unwrap();
        assert_eq!(w.verdict(), &Verdict::Healthy { since_ms: 1_350 });
        assert_eq!(w.report(), (Health::Healthy, String::new(), Some(1_350)));
        assert!(!w.wants_scan(), "no more reading once healthy");
        // A restarted worker adopts the verdict without the line.
        let a = HealthWatch::adopted(check("READY", 30_000), 1_000, &c);
        assert_eq!(a.verdict(), &Verdict::Healthy { since_ms: 1_350 });
    }

    #[test]
    fn no_line_by_the_deadline_is_unhealthy_and_final() {
        let (_d, c) = console(1 << 20);
        let mut w = booted_watch("READY", 500);
        guest_writes(&c, b"[sim] booted\nNOT READ\n");
        w.scan(&c, 1_499).unwrap();
        assert_eq!(w.verdict(), &Verdict::Pending, "deadline not passed");
        w.scan(&c, 1_500).unwrap();
        let (h, detail, since) = w.report();
        assert_eq!(h, Health::Unhealthy);
        assert_eq!(detail, r#"no "READY" on the console within 500 ms"#);
        assert_eq!(since, None);
        guest_writes(&c, b"READY\n");
        w.scan(&c, 2_000).unwrap();
        assert_eq!(w.report().0, Health::Unhealthy, "a late line does not heal");
        let a = HealthWatch::adopted(check("READY", 500), 1_000, &c);
        assert_eq!(a.report().1, detail);
    }

    #[test]
    fn a_line_written_before_the_deadline_counts_even_if_scanned_later() {
        let (_d, c) = console(1 << 20);
        let mut w = booted_watch("READY", 500);
        guest_writes(&c, b"READY\n");
        w.scan(&c, 9_000).unwrap();
        assert_eq!(w.report().0, Health::Healthy);
    }

    #[test]
    fn not_booted_is_pending_and_not_scanned() {
        let (_d, c) = console(1 << 20);
        let mut w = HealthWatch::new(check("READY", 1));
        guest_writes(&c, b"READY\n");
        assert!(!w.wants_scan());
        w.scan(&c, u64::MAX).unwrap();
        assert_eq!(w.report(), (Health::Pending, String::new(), None));
    }

    #[test]
    fn failure_is_unhealthy_with_the_reason() {
        let mut w = booted_watch("READY", 30_000);
        w.failed("cloud-hypervisor exit status 0");
        assert_eq!(
            w.report(),
            (
                Health::Unhealthy,
                "the VM failed: cloud-hypervisor exit status 0".into(),
                None
            )
        );
    }

    #[test]
    fn a_flood_is_read_once_within_the_budget_and_rotation_is_followed() {
        // 4 KiB histories: a flood rotates them at every sync.
        let (_d, c) = console(4096);
        let mut w = booted_watch("READY", 60_000);
        for round in 0..20u64 {
            guest_writes(&c, format!("{}\n", "x".repeat(3000)).as_bytes());
            w.scan(&c, 1_000 + round).unwrap();
            assert_eq!(w.verdict(), &Verdict::Pending);
        }
        // Each byte the guest wrote was read once, not the whole history
        // at every scan.
        assert_eq!(w.bytes_read, 20 * 3001);
        // A line split by a rotation is still found.
        guest_writes(&c, b"...REA");
        w.scan(&c, 2_000).unwrap();
        guest_writes(&c, format!("DY{}\n", "y".repeat(3500)).as_bytes());
        w.scan(&c, 2_001).unwrap();
        assert_eq!(w.verdict(), &Verdict::Healthy { since_ms: 2_001 });
    }

    #[test]
    fn a_scan_reads_at_most_its_budget() {
        let (_d, c) = console(4096);
        // What a sync left in the history: more than one scan may read.
        std::fs::write(&c.history, vec![b'z'; 20_000]).unwrap();
        let mut w = booted_watch("READY", 1);
        let (found, caught_up) = w.read_new(&c, scan_budget(&c)).unwrap();
        assert!(!found && !caught_up);
        assert_eq!(w.cursor.offset, 8192);
        // Not caught up: the deadline alone does not condemn it yet.
        w.scan(&c, 10_000).unwrap();
        assert_eq!(w.verdict(), &Verdict::Pending);
        assert_eq!(w.cursor.offset, 16_384);
        w.scan(&c, 10_000).unwrap();
        assert_eq!(w.report().0, Health::Unhealthy);
    }

    #[test]
    fn adoption_reads_the_kept_history_from_its_start() {
        let (_d, c) = console(1 << 20);
        std::fs::write(&c.rotated, b"old\nREADY\n").unwrap();
        std::fs::write(&c.history, b"newer output\n").unwrap();
        let mut w = HealthWatch::adopted(check("READY", 30_000), 1_000, &c);
        assert!(w.wants_scan());
        w.scan(&c, 5_000).unwrap();
        assert_eq!(w.verdict(), &Verdict::Healthy { since_ms: 5_000 });
    }

    #[test]
    fn another_vms_console_does_not_count() {
        let (_d, a) = console(1 << 20);
        let dir = a.history.parent().unwrap().parent().unwrap().to_owned();
        let b = RunDir::open(&dir).unwrap().console(&VmId::new_v7());
        guest_writes(&b, b"READY\n");
        guest_writes(&a, b"quiet\n");
        let mut w = booted_watch("READY", 100);
        w.scan(&a, 5_000).unwrap();
        assert_eq!(w.report().0, Health::Unhealthy);
    }

    #[test]
    fn persisted_verdicts_parse_and_garbage_is_pending() {
        assert_eq!(
            parse_verdict("healthy 42\n"),
            Some(Verdict::Healthy { since_ms: 42 })
        );
        assert_eq!(
            parse_verdict("unhealthy no \"X\" in 5 ms"),
            Some(Verdict::Unhealthy {
                detail: "no \"X\" in 5 ms".into()
            })
        );
        assert_eq!(parse_verdict("healthy soon"), None);
        assert_eq!(parse_verdict(""), None);
    }
}
