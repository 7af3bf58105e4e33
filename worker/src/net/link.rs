//! TAP devices on the bridge, through iproute2's `ip` (the links are
//! made once per VM; a process per change costs a few milliseconds, far
//! less than the VM's own start).

use super::{NetError, run_tool};

/// The `ip` tool and the bridge the VMs' TAPs join.
#[derive(Debug, Clone)]
pub struct Links {
    pub ip: String,
    pub bridge: String,
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
        let br = &self.bridge;
        let batch = format!("tuntap add dev {tap} mode tap\nlink set dev {tap} master {br} up\n");
        if self.batch(&batch).await.is_ok() {
            return Ok(());
        }
        if !self.exists(tap).await? {
            // Not there, and not made: say why.
            return self.batch(&batch).await;
        }
        self.run(&["link", "set", "dev", tap, "master", br, "up"])
            .await
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
