//! The one guest ch-sim can imitate: the hermetic example's PVH kernel
//! (example/hermetic/guest/pvh.S). ch-sim runs no kernel, but when the
//! kernel file carries that guest's marker string, ch-sim writes to the
//! serial file the line the real guest prints at boot, built by the same
//! rules as pvh.S (keep them in step): "pcr-guest: NAME is up", NAME the
//! value of `procurator.name=`, else of `systemd.hostname=`, else "unnamed".
//! The real guest then powers off when its command line has the word
//! `procurator.poweroff`; ch-sim does not model that.

use std::io::Read;

/// The marker pvh.S keeps in its read-only data.
const MARKER: &[u8] = b"procurator-pvh-guest v1";
/// The guest kernel is a few KiB; bigger files are not read.
const MAX_KERNEL: u64 = 1 << 20;

/// The line the hermetic guest prints for `cmdline`, when `kernel` is it.
pub(super) fn boot_line(kernel: &str, cmdline: &str) -> Option<String> {
    let f = std::fs::File::open(kernel).ok()?;
    if f.metadata().ok()?.len() > MAX_KERNEL {
        return None;
    }
    let mut bytes = Vec::new();
    f.take(MAX_KERNEL).read_to_end(&mut bytes).ok()?;
    bytes.windows(MARKER.len()).any(|w| w == MARKER).then(|| {
        let value = |key: &str| {
            cmdline
                .split(' ')
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_owned)
        };
        let name = value("procurator.name=")
            .or_else(|| value("systemd.hostname="))
            .unwrap_or_else(|| "unnamed".to_owned());
        format!("pcr-guest: {name} is up")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_vm_as_the_guest_does() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p.to_str().unwrap().to_owned()
        };
        let k = &kernel("k", b"\x7fELF...procurator-pvh-guest v1\0...");
        assert_eq!(
            boot_line(k, "console=ttyS0 systemd.hostname=web-0").as_deref(),
            Some("pcr-guest: web-0 is up")
        );
        assert_eq!(
            boot_line(k, "procurator.name=a systemd.hostname=b").as_deref(),
            Some("pcr-guest: a is up")
        );
        assert_eq!(
            boot_line(k, "").as_deref(),
            Some("pcr-guest: unnamed is up")
        );
        assert_eq!(boot_line(&kernel("other", b"a linux kernel"), ""), None);
    }
}
