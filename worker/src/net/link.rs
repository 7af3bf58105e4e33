//! TAP devices on the bridge, through iproute2's `ip` (the links are
//! made once per VM; a process per change costs a few milliseconds, far
//! less than the VM's own start).

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
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
        let spawn = |source| NetError::Spawn {
            program: self.ip.clone(),
            source,
        };
        let mut child = Command::new(&self.ip)
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(commands.as_bytes()).await.map_err(spawn)?;
        }
        let out = child.wait_with_output().await.map_err(spawn)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(NetError::Ip {
                args: commands.trim().replace('\n', "; "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
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
