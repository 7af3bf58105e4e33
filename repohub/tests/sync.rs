//! The project page's sync line: the deployed generation's commit against
//! the head of the deploy ref, through a real Cap'n Proto control plane
//! (the test master) and real git repositories.

mod support;

use commands::model::{ClusterStatusView, GenerationView};
use support::{FakeMaster, TestApp, commit_at, git, work_repo};

const PW: &str = "correct horse battery";

/// A cluster whose only generation is project shop's number 4 at `commit`.
fn deployed_at(commit: &str) -> ClusterStatusView {
    ClusterStatusView {
        generations: vec![GenerationView {
            project: "shop".into(),
            number: 4,
            commit: commit.into(),
            intent_hash: String::new(),
            vm_count: 0,
            published_at_ms: 0,
            ..Default::default()
        }],
        convergence_percent: 100.0,
        vms: Vec::new(),
        workers: Vec::new(),
        unplaced: Vec::new(),
        rollouts: Vec::new(),
    }
}

/// The project page's `#sync` paragraph with `commit` deployed, after two
/// commits (`first`, `second`) were pushed to shop/infra's main.
async fn sync_line(commit: impl Fn(&str, &str) -> String) -> (String, String, String) {
    let scratch = tempfile::tempdir().unwrap();
    let work = work_repo(
        scratch.path(),
        &[("flake.nix", b"{ outputs = _: {}; }\n")],
        "one",
    );
    let first = git(&work, &["rev-parse", "HEAD"]).trim().to_owned();
    commit_at(&work, "two", 1_600_000_100);
    let second = git(&work, &["rev-parse", "HEAD"]).trim().to_owned();
    let master = FakeMaster::start_with(deployed_at(&commit(&first, &second)), Vec::new());
    let app = TestApp::new(|c| c.control_plane = Some(master.addr.to_string()));
    let mut ann = app.client();
    ann.signup("ann", PW).await;
    ann.create_project("shop", true).await;
    ann.create_repo("shop", "infra").await;
    app.push_direct(&work, "shop", "infra");
    let body = ann.get("/shop").await.body;
    let start = body.find("<p id=\"sync\"").expect("a sync line");
    let end = start + body[start..].find("</p>").unwrap();
    (body[start..end].to_owned(), first, second)
}

#[tokio::test]
async fn the_head_deployed_is_synced() {
    let (line, _, second) = sync_line(|_, second| second.to_owned()).await;
    assert!(line.contains("Synced"), "{line}");
    assert!(line.contains("generation 4 is the head of main"), "{line}");
    assert!(
        line.contains(&format!("/shop/infra/commit/{second}")),
        "links the deployed commit: {line}"
    );
}

#[tokio::test]
async fn a_head_ahead_of_the_deployed_commit_is_out_of_sync_by_that_many_commits() {
    let (line, first, second) = sync_line(|first, _| first.to_owned()).await;
    assert!(line.contains("Out of sync"), "{line}");
    assert!(
        line.contains(&format!(
            "main ({}) is 1 commit ahead of generation 4 ({})",
            &second[..12],
            &first[..12]
        )),
        "{line}"
    );
}

#[tokio::test]
async fn a_deployed_commit_not_on_the_branch_is_named_as_such() {
    let (line, _, _) = sync_line(|_, _| "1".repeat(40)).await;
    assert!(line.contains("Out of sync"), "{line}");
    assert!(line.contains("is not an ancestor of main"), "{line}");
}
