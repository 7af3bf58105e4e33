//! The git side of the loop: `install-hook` writes a `post-receive` hook
//! into a bare repository, and `notify` (what the hook runs) posts each
//! pushed ref to ci_service. A hook never fails a push: when ci_service is
//! down it prints a warning and the push stands (the next push, or a
//! manual `ci_service notify`, builds it). When the binary is gone the hook
//! falls back to curl.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use commands::ci_api::{CiClient, CiError, PushEvent, PushReply};
use repo_outils::git::{GitError, sh_quote};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{0} is not a bare git repository (no HEAD or hooks/ there)")]
    NotARepo(PathBuf),
    /// Shown as it is: it already names the file it could not write.
    #[error(transparent)]
    Install(GitError),
}

/// Writes `<repo>/hooks/post-receive`, which runs `ci_binary notify` with
/// the pushed refs on stdin. Returns the hook's path.
pub fn install_hook(
    repo: &Path,
    url: &str,
    secret_file: Option<&Path>,
    ci_binary: &Path,
) -> Result<PathBuf, HookError> {
    let repo = repo
        .canonicalize()
        .map_err(|_| HookError::NotARepo(repo.to_owned()))?;
    if !repo.join("HEAD").is_file() {
        return Err(HookError::NotARepo(repo));
    }
    let mut cmd = format!(
        "{} notify --url {} --repo {}",
        sh_quote(&ci_binary.display().to_string()),
        sh_quote(url),
        sh_quote(&repo.display().to_string())
    );
    if let Some(f) = secret_file {
        let f = f.canonicalize().unwrap_or_else(|_| f.to_owned());
        cmd.push_str(&format!(
            " --secret-file {}",
            sh_quote(&f.display().to_string())
        ));
    }
    // Fallback when the binary moved away: curl, if the host has it. The
    // repo path goes in as a JSON string built here, single-quoted for sh.
    let repo_json = serde_json::to_string(&repo.display().to_string()).expect("json string");
    // The secret reaches curl as a config line on its stdin, written by the
    // shell's builtin printf: never in any process's argv, which every
    // local user can read in /proc.
    let (auth_pipe, auth) = match secret_file {
        Some(f) => {
            let f = f.canonicalize().unwrap_or_else(|_| f.to_owned());
            (
                format!(
                    "printf 'header = \"Authorization: Bearer %s\"\\n' \"$(cat {})\" | ",
                    sh_quote(&f.display().to_string())
                ),
                " --config -",
            )
        }
        None => (String::new(), ""),
    };
    let script = format!(
        r#"#!/bin/sh
# Installed by `ci_service install-hook`: tells ci_service about every
# pushed ref. Never fails the push (exit 0 whatever happens).
if [ -x {bin} ]; then
  {cmd} || true
elif command -v curl >/dev/null 2>&1; then
  while read -r old new ref; do
    body=$(printf '{{"repo":%s,"ref":"%s","old":"%s","new":"%s"}}' {repo_json} "$ref" "$old" "$new")
    if {auth_pipe}curl -fsS -m 5 -o /dev/null -H 'Content-Type: application/json'{auth} -d "$body" {url}/hooks/push; then
      echo "ci_service: $ref queued" >&2
    else
      echo "warning: ci_service unreachable, $ref not built" >&2
    fi
  done
else
  echo "warning: neither {bin_plain} nor curl found; push not built" >&2
fi
exit 0
"#,
        bin = sh_quote(&ci_binary.display().to_string()),
        bin_plain = ci_binary.display(),
        repo_json = sh_quote(&repo_json),
        url = sh_quote(url.trim_end_matches('/')),
    );
    repo_outils::git::install_hook(&repo, "post-receive", &script).map_err(HookError::Install)
}

/// One line of post-receive's stdin: `<old> <new> <ref>`.
pub fn parse_update(line: &str) -> Option<(String, String, String)> {
    let mut it = line.split_whitespace();
    let (old, new, r) = (it.next()?, it.next()?, it.next()?);
    Some((old.to_owned(), new.to_owned(), r.to_owned()))
}

/// Posts every update read from `input` to `url`/hooks/push. Prints one
/// line per ref to stderr (git shows it to the pusher as `remote: …`).
/// Returns how many were accepted; failures are warnings, never errors.
pub async fn notify(url: &str, repo: &str, secret: Option<&str>, input: impl BufRead) -> usize {
    let client = CiClient::new(
        Some(url.to_owned()),
        secret.map(str::to_owned),
        Duration::from_secs(5),
    );
    let mut accepted = 0;
    for line in input.lines().map_while(Result::ok) {
        let Some((old, new, r)) = parse_update(&line) else {
            continue;
        };
        let event = PushEvent {
            repo: repo.to_owned(),
            git_ref: r.clone(),
            old,
            new,
            // A bare repository's hook knows no project: ci_service's
            // --projects file maps it.
            project: None,
            deploy_ref: None,
        };
        let sent = match &client {
            Ok(client) => client.push(&event).await,
            Err(e) => {
                eprintln!("warning: ci_service unreachable, {r} not built: {e}");
                continue;
            }
        };
        match sent {
            Ok(PushReply {
                job_id: Some(id), ..
            }) => {
                accepted += 1;
                eprintln!("ci_service: {r} -> job {id} queued ({url}/jobs/{id}/log?follow=1)");
            }
            Ok(PushReply { job_id: None, .. }) => {
                accepted += 1;
                eprintln!("ci_service: {r}: nothing to build");
            }
            Err(CiError::Status { status, body }) => {
                let status = http::StatusCode::from_u16(status)
                    .map_or_else(|_| status.to_string(), |s| s.to_string());
                eprintln!("warning: ci_service refused {r}: {status} {}", body.trim());
            }
            Err(e) => {
                eprintln!("warning: ci_service unreachable, {r} not built: {e}");
            }
        }
    }
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_parsing() {
        let z = "0".repeat(40);
        let n = "a".repeat(40);
        assert_eq!(
            parse_update(&format!("{z} {n} refs/heads/main\n")),
            Some((z.clone(), n.clone(), "refs/heads/main".into()))
        );
        assert_eq!(parse_update("garbage"), None);
    }

    #[test]
    fn hook_is_installed_executable_and_refuses_non_repos() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            install_hook(tmp.path(), "http://x", None, Path::new("/bin/true")),
            Err(HookError::NotARepo(_))
        ));
        git2::Repository::init_bare(tmp.path().join("r.git")).unwrap();
        let p = install_hook(
            &tmp.path().join("r.git"),
            "http://127.0.0.1:1",
            None,
            Path::new("/bin/ci_service"),
        )
        .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("'/bin/ci_service' notify --url 'http://127.0.0.1:1' --repo '/"),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o111,
            0o111
        );
    }

    /// The curl fallback (the ci_service binary gone) sends the secret, and
    /// no process it starts carries the secret in its argv: a `curl` first
    /// on PATH records its arguments before running the real one.
    #[test]
    fn the_curl_fallback_keeps_the_secret_out_of_argv() {
        use std::io::{Read, Write};
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        git2::Repository::init_bare(d.join("r.git")).unwrap();
        let secret = d.join("secret");
        std::fs::write(&secret, "s3cret-hook-value-0123\n").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hook = install_hook(
            &d.join("r.git"),
            &url,
            Some(&secret),
            &d.join("gone/ci_service"),
        )
        .unwrap();
        let shim = d.join("bin");
        std::fs::create_dir_all(&shim).unwrap();
        let argv_log = d.join("argv");
        std::fs::write(
            shim.join("curl"),
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" >> '{}'\nexec /usr/bin/curl \"$@\"\n",
                argv_log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(shim.join("curl"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        // Answers one request with 200 and hands back what it read.
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&req).contains("\"new\"") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .unwrap();
            String::from_utf8_lossy(&req).into_owned()
        });
        let path = format!(
            "{}:{}",
            shim.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = std::process::Command::new(&hook)
            .env("PATH", path)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let line = format!("{} {} refs/heads/main\n", "0".repeat(40), "a".repeat(40));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let req = server.join().unwrap();
        assert!(
            req.contains("Authorization: Bearer s3cret-hook-value-0123"),
            "{req}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let argv = std::fs::read_to_string(&argv_log).unwrap();
        assert!(argv.contains("--config"), "{argv}");
        assert!(
            !argv.contains("s3cret"),
            "the secret was in curl's argv: {argv}"
        );
        assert!(!std::fs::read_to_string(&hook).unwrap().contains("s3cret"));
    }

    #[tokio::test]
    async fn notify_to_a_dead_service_only_warns() {
        let n = notify(
            "http://127.0.0.1:1",
            "/r",
            None,
            format!("{} {} refs/heads/main\n", "0".repeat(40), "a".repeat(40)).as_bytes(),
        )
        .await;
        assert_eq!(n, 0);
    }
}
