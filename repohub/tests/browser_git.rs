//! Browser test of the git views: headless Chromium against the real
//! `repohub` binary, with history pushed by the real git client (over a
//! `.git`-less URL). Walks the repository page (clone URL and its Copy
//! button), the commit page of a rename, the branch/tag switcher on the
//! tree and log pages and a log page past the end; each page is
//! screenshotted under `target/test-artifacts/repohub/` and checked for
//! no horizontal scroll at 1280 px.

mod support;

use std::process::Command;

use support::webdriver::Driver;
use support::{artefacts, auth_url, commit_at, create_admin, git, push_main, work_repo};
use testkit::{Log, Proc};

const PW: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_diff_switcher_and_clone_url_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_admin(&data, "ann", PW);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_repohub"));
    cmd.args(["--listen", "127.0.0.1:0", "--kdf-memory-kib", "1024"])
        .arg("--data-dir")
        .arg(&data);
    // Started on port 0: the address comes from its "listening on" line.
    let hub = Proc::spawn("repohub", cmd, Log::File(dir.path().join("repohub.log")));
    let base = format!("http://{}", hub.addr);
    let url = |p: &str| format!("{base}{p}");
    let driver = Driver::start().await;
    let b = driver.session(artefacts()).await;
    let shots = [
        "git-01-repo",
        "git-02-commit",
        "git-03-tree",
        "git-04-log",
        "git-05-past-end",
    ];
    for s in shots {
        let _ = std::fs::remove_file(artefacts().join(format!("{s}.png")));
    }

    // Log in, make a project and a repository, get a token.
    b.goto(&url("/login")).await;
    b.fill("#username", "ann").await;
    b.fill("#password", PW).await;
    b.click("#submit").await;
    b.wait_text("header", "ann", 10).await;
    b.goto(&url("/new")).await;
    b.fill("#project-name", "shop").await;
    b.click("#create-project").await;
    b.wait_text("h1", "shop", 10).await;
    b.fill("#repo-name", "web").await;
    b.click("#create-repo").await;
    b.find("#empty-repo", 10).await;
    b.goto(&url("/settings/tokens")).await;
    b.fill("#token-name", "laptop").await;
    b.click("#create-token").await;
    let token = b.text("#new-token").await.trim().to_owned();

    // History: a module renamed with one line changed, a branch and a tag,
    // pushed without `.git` in the URL.
    let module: String = (1..=40).map(|i| format!("fn f{i}() {{}}\n")).collect();
    let work = work_repo(
        dir.path(),
        &[
            ("src/old_name.rs", module.as_bytes()),
            ("README.md", b"# web\n"),
        ],
        "first",
    );
    git(&work, &["mv", "src/old_name.rs", "src/new_name.rs"]);
    std::fs::write(
        work.join("src/new_name.rs"),
        module.replace("fn f20() {}", "fn f20() { /* a very long line */ }"),
    )
    .unwrap();
    std::fs::write(
        work.join("src/wide.rs"),
        format!("// {}\n", "wide ".repeat(200)),
    )
    .unwrap();
    git(&work, &["add", "-A"]);
    commit_at(&work, "rename old_name to new_name", 1_600_000_100);
    git(&work, &["branch", "feature/login"]);
    git(&work, &["tag", "v1.0"]);
    let remote = auth_url(&base, "ann", &token, "/shop/web");
    push_main(&work, &remote).await;
    let (ok, out) = support::git_async(&work, &["push", &remote, "feature/login", "v1.0"]).await;
    assert!(ok, "{out}");
    let head = git(&work, &["rev-parse", "HEAD"]).trim().to_owned();

    // The repository page: the clone URL in a field with a Copy button.
    b.goto(&url("/shop/web")).await;
    b.find("#copy-clone", 10).await;
    let field = b.find("#clone-url", 10).await;
    assert!(!field.is_empty());
    b.click("#copy-clone").await;
    b.wait_text("#copy-clone", "Copied", 5).await;
    b.screenshot(shots[0]).await;
    assert!(!b.git_page_scrolls_sideways().await, "repository page");

    // The commit page: the rename from → to, with the changed line.
    b.goto(&url(&format!("/shop/web/commit/{head}"))).await;
    let changed = b.wait_text("#changed", "renamed", 10).await;
    assert!(
        changed.contains("src/old_name.rs → src/new_name.rs"),
        "{changed}"
    );
    let first = b.text("#file-1").await;
    assert!(
        first.contains("+fn f20() { /* a very long line */ }"),
        "{first}"
    );
    b.screenshot(shots[1]).await;
    assert!(!b.git_page_scrolls_sideways().await, "commit page");

    // The switcher on the tree page: open it, pick the branch, same directory.
    b.goto(&url("/shop/web/tree/main/src")).await;
    b.click("#ref-switcher summary").await;
    b.screenshot(shots[2]).await;
    assert!(!b.git_page_scrolls_sideways().await, "tree page");
    b.click("#ref-switcher a[href='/shop/web/tree/feature%2Flogin/src']")
        .await;
    b.wait_text("#ref-switcher summary", "feature/login", 10)
        .await;
    assert!(
        b.current_url()
            .await
            .ends_with("/shop/web/tree/feature%2Flogin/src")
    );
    b.wait_text("#tree", "new_name.rs", 10).await;

    // The log on the tag, and a page past the end.
    b.goto(&url("/shop/web/log/v1.0")).await;
    b.wait_text("#commits", "rename old_name to new_name", 10)
        .await;
    b.wait_text("#ref-switcher summary", "v1.0", 10).await;
    b.screenshot(shots[3]).await;
    assert!(!b.git_page_scrolls_sideways().await, "log page");
    b.goto(&url("/shop/web/log/main?page=99")).await;
    b.wait_text(
        "#past-end",
        "no commits on page 99: the history of main has 1 page (2 commits)",
        10,
    )
    .await;
    b.click("#newer").await;
    b.wait_text("#commits", "first", 10).await;
    b.goto(&url("/shop/web/log/main?page=99")).await;
    b.wait_text("header", "ann", 10).await;
    b.screenshot(shots[4]).await;
    for s in shots {
        assert!(artefacts().join(format!("{s}.png")).exists(), "{s}");
    }
}
