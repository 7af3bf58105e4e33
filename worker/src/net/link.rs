//! TAP devices on the bridge, through iproute2's `ip` (the links are
//! made once per VM; a process per change costs a few milliseconds, far
//! less than the VM's own start).

use super::{NetError, run_tool};
use crate::vmm::user::VmOwner;

/// The `ip` tool and the bridge the VMs' TAPs join.
#[derive(Debug, Clone)]
pub struct Links {
    pub ip: String,
    pub bridge: String,
    /// Who may open the TAPs: Cloud Hypervisor running as the VM user
    /// (`--vm-user`) opens its TAP by name, which the kernel allows only
    /// to the TAP's owner (or CAP_NET_ADMIN, which CH does not have).
    /// `None`: root-only TAPs, for CH running as root.
    pub owner: Option<VmOwner>,
}

impl Links {
    /// Fails unless the bridge exists: the host module (or a test) makes it.
    pub async fn check_bridge(&self) -> Result<(), NetError> {
        if self.exists(&self.bridge).await? {
            Ok(())
        } else {
            Err(NetError::NoBridge(self.bridge.clone()))
        }
    }

    /// Makes `tap` a TAP device (unless a link of that name exists: one the
    /// worker made before a restart, or a test's veth standing in for a
    /// guest), puts it on the bridge and brings it up. The usual case is
    /// one `ip -batch` process; an existing link costs two more.
    pub async fn attach(&self, tap: &str) -> Result<(), NetError> {
        let batch = self.attach_batch(tap);
        if self.batch(&batch).await.is_ok() {
            return Ok(());
        }
        if !self.exists(tap).await? {
            // Not there, and not made: say why.
            return self.batch(&batch).await;
        }
        self.run(&["link", "set", "dev", tap, "master", &self.bridge, "up"])
            .await
    }

    /// The `ip -batch` lines that make `tap`, owned by `owner` if set, and
    /// put it on the bridge.
    fn attach_batch(&self, tap: &str) -> String {
        let owner = self
            .owner
            .map(|o| format!(" user {} group {}", o.uid, o.gid))
            .unwrap_or_default();
        let br = &self.bridge;
        format!("tuntap add dev {tap} mode tap{owner}\nlink set dev {tap} master {br} up\n")
    }

    async fn batch(&self, commands: &str) -> Result<(), NetError> {
        run_tool(&self.ip, &["-batch", "-"], Some(commands))
            .await?
            .map(drop)
            .map_err(|stderr| NetError::Ip {
                args: commands.trim().replace('\n', "; "),
                stderr,
            })
    }

    /// Removes `tap` if it exists.
    pub async fn remove(&self, tap: &str) -> Result<(), NetError> {
        if self.exists(tap).await? {
            self.run(&["link", "del", "dev", tap]).await?;
        }
        Ok(())
    }

    pub async fn exists(&self, name: &str) -> Result<bool, NetError> {
        Ok(run_tool(&self.ip, &["link", "show", "dev", name], None)
            .await?
            .is_ok())
    }

    async fn run(&self, args: &[&str]) -> Result<(), NetError> {
        run_tool(&self.ip, args, None)
            .await?
            .map(drop)
            .map_err(|stderr| NetError::Ip {
                args: args.join(" "),
                stderr,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(owner: Option<VmOwner>) -> Links {
        Links {
            ip: "ip".into(),
            bridge: "br0".into(),
            owner,
        }
    }

    #[test]
    fn a_tap_belongs_to_the_vm_user_when_there_is_one() {
        assert_eq!(
            links(Some(VmOwner { uid: 990, gid: 78 })).attach_batch("pcrt1"),
            "tuntap add dev pcrt1 mode tap user 990 group 78\nlink set dev pcrt1 master br0 up\n"
        );
        assert_eq!(
            links(None).attach_batch("pcrt1"),
            "tuntap add dev pcrt1 mode tap\nlink set dev pcrt1 master br0 up\n"
        );
    }
}
