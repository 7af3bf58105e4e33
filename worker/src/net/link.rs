//! TAP devices on the bridge, through iproute2's `ip` (the links are
//! made once per VM; a process per change costs a few milliseconds, far
//! less than the VM's own start).

use std::process::Stdio;

use tokio::process::Command;

use super::NetError;

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
    /// guest), puts it on the bridge and brings it up.
    pub async fn attach(&self, tap: &str) -> Result<(), NetError> {
        if !self.exists(tap).await? {
            self.run(&["tuntap", "add", "dev", tap, "mode", "tap"])
                .await?;
        }
        self.run(&["link", "set", "dev", tap, "master", &self.bridge, "up"])
            .await
    }

    /// Removes `tap` if it exists.
    pub async fn remove(&self, tap: &str) -> Result<(), NetError> {
        if self.exists(tap).await? {
            self.run(&["link", "del", "dev", tap]).await?;
        }
        Ok(())
    }

    pub async fn exists(&self, name: &str) -> Result<bool, NetError> {
        let status = Command::new(&self.ip)
            .args(["link", "show", "dev", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(|source| NetError::Spawn {
                program: self.ip.clone(),
                source,
            })?;
        Ok(status.success())
    }

    async fn run(&self, args: &[&str]) -> Result<(), NetError> {
        let out = Command::new(&self.ip)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| NetError::Spawn {
                program: self.ip.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(NetError::Ip {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}
