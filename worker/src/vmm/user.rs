//! The unprivileged account cloud-hypervisor runs as (`--vm-user`,
//! `--vm-group`; issue 14 point 9). A guest that escapes into its CH
//! process then holds that account, not root: it can reach `/dev/kvm`
//! (by group), its own run files and world-readable store paths, and
//! nothing else of the host.
//!
//! CH gets the user's uid and one group, and no supplementary groups (the
//! standard library drops them when it changes the uid, and a group list
//! would need `unsafe` in a `pre_exec`). So the group is the one that
//! opens `/dev/kvm`: `--vm-group`, else `kvm` when the host has it, else
//! the user's primary group. Root stays needed for what the worker does
//! around CH: preparing TAP devices, bridges and nftables rules, writing
//! the store (pulls), creating each VM's overlay and handing it over, and
//! reading the console and the API socket of every VM.

use std::io;
use std::path::Path;

/// The uid and gid CH processes run as and VM files belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmOwner {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("cannot read {path}")]
    Read {
        path: &'static str,
        source: io::Error,
    },
    #[error("--vm-user {0}: no such user in /etc/passwd")]
    NoUser(String),
    #[error("--vm-group {0}: no such group in /etc/group")]
    NoGroup(String),
    #[error("--vm-user {0} is root; the point is to run cloud-hypervisor as someone else")]
    Root(String),
}

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

impl VmOwner {
    /// Looks `user` and `group` (names or numbers) up in `/etc/passwd` and
    /// `/etc/group`; see the module comment for the group's default.
    pub fn lookup(user: &str, group: Option<&str>) -> Result<Self, UserError> {
        let read = |path: &'static str| {
            std::fs::read_to_string(Path::new(path))
                .map_err(|source| UserError::Read { path, source })
        };
        Self::from_files(&read(PASSWD)?, &read(GROUP)?, user, group)
    }

    fn from_files(
        passwd: &str,
        groups: &str,
        user: &str,
        group: Option<&str>,
    ) -> Result<Self, UserError> {
        // name:x:uid:gid:... and name:x:gid:members
        let find = |table: &str, key: &str| -> Option<(u32, Option<u32>)> {
            table.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                let id = f.get(2)?.parse::<u32>().ok()?;
                (f[0] == key || key.parse::<u32>().ok() == Some(id))
                    .then(|| (id, f.get(3).and_then(|g| g.parse().ok())))
            })
        };
        let (uid, primary) = match find(passwd, user) {
            Some((uid, gid)) => (uid, gid),
            None => match user.parse::<u32>() {
                Ok(uid) => (uid, None),
                Err(_) => return Err(UserError::NoUser(user.to_owned())),
            },
        };
        if uid == 0 {
            return Err(UserError::Root(user.to_owned()));
        }
        let gid = match group {
            Some(g) => match find(groups, g) {
                Some((gid, _)) => gid,
                None => g
                    .parse::<u32>()
                    .map_err(|_| UserError::NoGroup(g.to_owned()))?,
            },
            None => find(groups, "kvm")
                .map(|(gid, _)| gid)
                .or(primary)
                .unwrap_or(uid),
        };
        Ok(VmOwner { uid, gid })
    }

    /// Gives `path` to this owner with `mode`.
    pub fn give(&self, path: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/sbin/nologin\npcr-vm:x:990:990::/:/sbin/nologin\n";

    #[test]
    fn user_and_group_resolve_with_kvm_as_the_default_group() {
        let groups = "root:x:0:\nkvm:x:36:\npcr-vm:x:990:\n";
        let o = VmOwner::from_files(PW, groups, "pcr-vm", None).unwrap();
        assert_eq!(o, VmOwner { uid: 990, gid: 36 });
        let o = VmOwner::from_files(PW, groups, "nobody", Some("pcr-vm")).unwrap();
        assert_eq!(
            o,
            VmOwner {
                uid: 65534,
                gid: 990
            }
        );
        // Without a kvm group: the user's primary group.
        let o = VmOwner::from_files(PW, "root:x:0:\n", "990", None).unwrap();
        assert_eq!(o, VmOwner { uid: 990, gid: 990 });
        let o = VmOwner::from_files(PW, groups, "4000", Some("4001")).unwrap();
        assert_eq!(
            o,
            VmOwner {
                uid: 4000,
                gid: 4001
            }
        );
    }

    #[test]
    fn root_and_unknown_names_are_refused() {
        let groups = "kvm:x:36:\n";
        let err = VmOwner::from_files(PW, groups, "root", None).unwrap_err();
        assert!(err.to_string().contains("is root"), "{err}");
        assert!(VmOwner::from_files(PW, groups, "0", None).is_err());
        let err = VmOwner::from_files(PW, groups, "ghost", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--vm-user ghost: no such user in /etc/passwd"
        );
        let err = VmOwner::from_files(PW, groups, "nobody", Some("ghosts")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--vm-group ghosts: no such group in /etc/group"
        );
    }
}
