//! ci_service's control-plane publisher against a control plane with a
//! token file (the real binary, loopback TCP): the `ci` token publishes, a
//! `reader` token is refused by the control plane, a `ci:team-a` token
//! publishes for team-a only, and a wrong token never gets a session; the
//! publish says why each time.

use std::time::Duration;

use ci_service::db::{Db, Generation};
use ci_service::publisher::{PublishError, Publisher};
use commands::auth::Secret;
use testkit::services::{ControlPlaneArgs, start_control_plane};
use testkit::{Log, Proc};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "admin-token-0123456789";
const CI: &str = "ci-token-0123456789abcd";
const READER: &str = "reader-token-0123456789";
const CI_TEAM_A: &str = "ci-team-a-token-0123456789";

/// Starts a control plane with tokens (no startup grace), its token file
/// and log in `dir`.
fn start_cp(dir: &std::path::Path) -> Proc {
    let tokens = dir.join("cp-tokens");
    std::fs::write(
        &tokens,
        format!("admin {ADMIN}\nci {CI}\nreader {READER}\nci:team-a {CI_TEAM_A}\n"),
    )
    .unwrap();
    let cp = ControlPlaneArgs {
        args: vec!["--token-file".into(), tokens.display().to_string()],
        ..ControlPlaneArgs::default()
    };
    start_control_plane(&cp, Log::File(dir.join("control_plane.log")))
}

fn generation(number: i64) -> Generation {
    generation_of("default", number)
}

fn generation_of(project: &str, number: i64) -> Generation {
    let spec = serde_json::json!({
        "name": "web", "toplevel": "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys",
        "kernelPath": "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/kernel",
        "cmdline": "", "cpu": 1, "memoryMb": 128, "contentHash": "h",
    });
    Generation {
        project: project.into(),
        number,
        job_id: 1,
        commit: "a".repeat(40),
        intent_hash: format!("intent-{number}").into(),
        closure: String::new(),
        created_at_ms: 0,
        specs_json: serde_json::json!([spec]).to_string(),
    }
}

#[tokio::test]
async fn publisher_logs_in_with_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let cp = start_cp(dir.path());
    let addr = cp.addr.clone();
    let (db, _) = Db::open(&dir.path().join("ci.sqlite")).unwrap();
    let db = std::sync::Arc::new(db);

    let start = |token: &str| {
        Publisher::start(
            addr.clone(),
            Secret::new(token),
            db.clone(),
            shutdown.clone(),
        )
    };
    let wait_connected = |p: &Publisher| {
        let p = p.clone();
        async move {
            for _ in 0..200 {
                if p.is_connected() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the publisher never connected");
        }
    };

    let ci = start(CI);
    wait_connected(&ci).await;
    let p = ci.publish(generation(1)).await.unwrap();
    assert!(!p.noop);

    // A reader gets a session (it may read) but the publish is refused.
    let reader = start(READER);
    wait_connected(&reader).await;
    match reader.publish(generation(2)).await {
        Err(PublishError::Refused(m)) => {
            assert!(
                m.contains("a reader token may not publish a generation"),
                "{m}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        ci.remote_active("default"),
        1,
        "the refused publish changed nothing"
    );

    // A token scoped to team-a publishes for team-a and for nobody else.
    let team_a = start(CI_TEAM_A);
    wait_connected(&team_a).await;
    team_a.publish(generation_of("team-a", 1)).await.unwrap();
    match team_a.publish(generation_of("team-b", 1)).await {
        Err(PublishError::Refused(m)) => assert!(
            m.contains("this ci:team-a token may publish for project team-a only, not team-b"),
            "{m}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match team_a.publish(generation(2)).await {
        Err(PublishError::Refused(m)) => assert!(m.contains("not default"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // A wrong token never gets a session: the publish says why.
    let wrong = start("not-the-token-0123456");
    match wrong.publish(generation(2)).await {
        Err(PublishError::Unavailable(m)) => assert!(m.contains("refused the login"), "{m}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(!wrong.is_connected());
}
