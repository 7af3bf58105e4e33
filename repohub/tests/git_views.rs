//! Handler tests (router + oneshot) of the git views and forms: commit
//! diffs against what `git` itself reports (renames, binaries, bounds,
//! hostile names and lines rendered as text), the branch/tag switcher, log
//! paging past the end, failed forms and error pages that keep the session
//! and say what is missing, and the return-to after login.

mod support;

use http::StatusCode;
use support::{Client, TestApp, commit_at, git, work_repo};

const PW: &str = "correct horse battery";

/// `ann`, owner of the public project `p` holding repository `r` with the
/// history of `work` pushed to it.
async fn ann_with_history(app: &TestApp, work: &std::path::Path) -> Client {
    let mut ann = app.client();
    let r = ann.signup("ann", PW).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    ann.create_project("p", true).await;
    ann.create_repo("p", "r").await;
    app.push_direct(work, "p", "r");
    ann
}

fn head(work: &std::path::Path) -> String {
    git(work, &["rev-parse", "HEAD"]).trim().to_owned()
}

/// `git show --numstat -M` of HEAD: the (added, deleted) totals of text
/// files, as git counts them.
fn git_totals(work: &std::path::Path) -> (usize, usize) {
    let out = git(work, &["show", "--numstat", "-M", "--format=", "HEAD"]);
    out.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let a = f.next()?.parse::<usize>().ok()?;
            let d = f.next()?.parse::<usize>().ok()?;
            Some((a, d))
        })
        .fold((0, 0), |(a, d), (x, y)| (a + x, d + y))
}

#[tokio::test]
async fn commit_page_shows_the_diff_with_renames_binaries_and_hostile_text_inert() {
    let app = TestApp::new(|_| {});
    let lines = |n: usize, tag: &str| -> Vec<u8> {
        (1..=n)
            .map(|i| format!("{tag} line {i}\n"))
            .collect::<String>()
            .into_bytes()
    };
    let module = lines(30, "module");
    let text = lines(10, "text");
    let work = work_repo(
        app.dir.path(),
        &[
            ("old/name.rs", &module),
            ("a.txt", &text),
            ("gone.txt", b"going away\n"),
            ("bin.dat", b"\x00\x01\x02 binary"),
        ],
        "first",
    );
    // Rename with one line changed, a modification, a deletion, a binary
    // change and a file whose name and content are markup.
    std::fs::create_dir_all(work.join("new")).unwrap();
    git(&work, &["mv", "old/name.rs", "new/name.rs"]);
    let mut renamed = String::from_utf8(module.clone()).unwrap();
    renamed = renamed.replace("module line 15\n", "module line fifteen\n");
    std::fs::write(work.join("new/name.rs"), renamed).unwrap();
    std::fs::write(
        work.join("a.txt"),
        String::from_utf8(text)
            .unwrap()
            .replace("text line 5\n", "text line five\n"),
    )
    .unwrap();
    std::fs::remove_file(work.join("gone.txt")).unwrap();
    std::fs::write(work.join("bin.dat"), b"\x00\x09\x08 other binary").unwrap();
    std::fs::write(
        work.join("<img src=x onerror=alert(1)>.txt"),
        "<script>alert('diff')</script>\nno newline at the end",
    )
    .unwrap();
    git(&work, &["add", "-A"]);
    commit_at(&work, "second <b>bold</b>", 1_600_000_100);
    let mut ann = ann_with_history(&app, &work).await;
    let id = head(&work);

    let page = ann.get(&format!("/p/r/commit/{id}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let b = &page.body;
    // The rename is detected (git diff -M), shown as from → to.
    page.assert_contains(&[
        "fstatus-renamed",
        "<code class=\"path\">old/name.rs</code> → <code class=\"path\">new/name.rs</code>",
        "fstatus-deleted",
        "gone.txt",
        "fstatus-added",
        "fstatus-modified",
        "Binary file",
    ]);
    assert!(!b.contains("fstatus-added\">added</span>\n<a href=\"#file-1\"><code>new/name.rs"));
    // Lines with their numbers: line 15 of the renamed file, old and new.
    page.assert_contains(&[
        "<td class=\"ln\">15</td><td class=\"ln\"></td><td class=\"code\">-module line 15</td>",
        "<td class=\"ln\"></td><td class=\"ln\">15</td><td class=\"code\">+module line fifteen</td>",
        "<td class=\"ln\">14</td><td class=\"ln\">14</td><td class=\"code\"> module line 14</td>",
        "@@ -2,7 +2,7 @@",
        "\\ No newline at end of file",
    ]);
    // Totals agree with git's own count.
    let (adds, dels) = git_totals(&work);
    page.assert_contains(&[&format!(
        "<span class=\"add\">+{adds}</span> <span class=\"del\">−{dels}</span>"
    )]);
    assert_eq!(
        (adds, dels),
        (4, 3),
        "rename +1 -1, a.txt +1 -1, gone -1, hostile +2"
    );
    // Markup in names, lines and the message is text.
    page.assert_contains(&[
        "&#60;img src=x onerror=alert(1)&#62;.txt",
        "+&#60;script&#62;alert(&#39;diff&#39;)&#60;/script&#62;",
        "second &#60;b&#62;bold&#60;/b&#62;",
    ]);
    assert!(!b.contains("<script>alert") && !b.contains("<img src=x") && !b.contains("<b>bold"));

    // The root commit diffs against nothing: every file added.
    let first = git(&work, &["rev-parse", "HEAD~1"]).trim().to_owned();
    let root = ann.get(&format!("/p/r/commit/{first}")).await;
    assert_eq!(root.status, StatusCode::OK);
    assert_eq!(
        root.body
            .matches("<h3><span class=\"fstatus fstatus-added\"")
            .count(),
        4
    );
    assert!(!root.body.contains("fstatus-deleted"));
}

#[tokio::test]
async fn big_commits_are_bounded_and_say_how_much_is_not_shown() {
    let app = TestApp::new(|_| {});
    let files: Vec<(String, Vec<u8>)> = (0..400)
        .map(|i| (format!("f/{i:03}.txt"), format!("file {i}\n").into_bytes()))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    let work = work_repo(app.dir.path(), &refs, "400 files");
    let mut ann = ann_with_history(&app, &work).await;
    let page = ann.get(&format!("/p/r/commit/{}", head(&work))).await;
    assert_eq!(page.status, StatusCode::OK);
    page.assert_contains(&[
        "400 files changed",
        "id=\"files-not-shown\">100 more files not shown: this page lists at most 300 changed files.",
    ]);
    assert_eq!(
        page.body.matches("<section class=\"filediff\"").count(),
        300
    );

    // One file of 6,000 lines: 5,000 drawn, the rest counted.
    let big: String = (0..6000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(work.join("big.txt"), big).unwrap();
    git(&work, &["add", "-A"]);
    commit_at(&work, "big", 1_600_000_200);
    app.push_direct(&work, "p", "r");
    let page = ann.get(&format!("/p/r/commit/{}", head(&work))).await;
    assert_eq!(page.status, StatusCode::OK);
    page.assert_contains(&[
        "+6000",
        "id=\"lines-not-shown\">1000 more diff lines not shown: this page draws at most 5000 lines.",
        "+line 4998",
    ]);
    assert!(!page.body.contains("+line 5000<"));
}

#[tokio::test]
async fn switcher_lists_branches_and_tags_and_keeps_the_view() {
    let app = TestApp::new(|_| {});
    let work = work_repo(
        app.dir.path(),
        &[("src/lib.rs", b"// lib\n"), ("README.md", b"# r\n")],
        "first",
    );
    git(&work, &["branch", "feature/x"]);
    git(&work, &["branch", "a<b>\"q"]);
    git(&work, &["tag", "v1.0"]);
    let mut ann = ann_with_history(&app, &work).await;
    git(
        &work,
        &[
            "push",
            "-q",
            app.state.repo_dir("p", "r").to_str().unwrap(),
            "--all",
        ],
    );
    git(
        &work,
        &[
            "push",
            "-q",
            app.state.repo_dir("p", "r").to_str().unwrap(),
            "--tags",
        ],
    );

    let tree = ann.get("/p/r/tree/main/src").await;
    assert_eq!(tree.status, StatusCode::OK);
    tree.assert_contains(&[
        "id=\"ref-switcher\"",
        "<strong>main</strong>",
        "href=\"/p/r/tree/feature%2Fx/src\"",
        "href=\"/p/r/tree/v1.0/src\"",
        // A branch name with markup is text; its link is percent-encoded.
        "a&#60;b&#62;&#34;q",
        "href=\"/p/r/tree/a%3Cb%3E%22q/src\"",
    ]);
    assert!(!tree.body.contains("a<b>"));
    // The links lead somewhere: the same directory on the other refs.
    for to in ["/p/r/tree/feature%2Fx/src", "/p/r/tree/v1.0/src"] {
        let r = ann.get(to).await;
        assert_eq!(r.status, StatusCode::OK, "{to}");
        r.assert_contains(&["lib.rs"]);
    }
    let log = ann.get("/p/r/log/v1.0").await;
    assert_eq!(log.status, StatusCode::OK);
    log.assert_contains(&[
        "<strong>v1.0</strong>",
        "href=\"/p/r/log/main\"",
        "href=\"/p/r/log/feature%2Fx\"",
    ]);
    // The repository page counts the tags.
    ann.get("/p/r").await.assert_contains(&["1 tag"]);
}

#[tokio::test]
async fn log_paging_past_the_end_names_the_last_page() {
    let app = TestApp::new(|_| {});
    let work = work_repo(app.dir.path(), &[("a", b"a")], "first");
    for i in 0..119 {
        commit_at(&work, &format!("commit {i}"), 1_600_000_001 + i);
    }
    let mut ann = ann_with_history(&app, &work).await;
    let rows = |b: &str| b.matches("<tr><td><a href=\"/p/r/commit/").count();

    let last = ann.get("/p/r/log/main?page=3").await;
    assert_eq!(last.status, StatusCode::OK);
    assert_eq!(rows(&last.body), 20);
    last.assert_contains(&["page 3", "href=\"?page=2\" id=\"newer\""]);
    assert!(!last.body.contains("id=\"older\""));

    let past = ann.get("/p/r/log/main?page=99").await;
    assert_eq!(past.status, StatusCode::NOT_FOUND);
    past.assert_contains(&[
        "no commits on page 99: the history of main has 3 pages (120 commits)",
        "href=\"?page=3\" id=\"newer\">← Last page</a>",
        "Log out",
    ]);
    assert!(!past.body.contains("page 100"));
    // Page 0 is page 1; absurd page numbers are refused, not walked.
    let zero = ann.get("/p/r/log/main?page=0").await;
    assert_eq!(rows(&zero.body), 50);
    zero.assert_contains(&["page 1"]);
    let far = ann.get("/p/r/log/main?page=2001").await;
    assert_eq!(far.status, StatusCode::BAD_REQUEST);
    far.assert_contains(&["page numbers go up to 2000", "Log out"]);
    let huge = ann.get("/p/r/log/main?page=99999999999999999999999").await;
    assert_eq!(huge.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn failed_forms_show_the_form_again_with_the_error_and_the_session() {
    let app = TestApp::new(|_| {});
    let work = work_repo(app.dir.path(), &[("a", b"a")], "first");
    let mut ann = ann_with_history(&app, &work).await;
    ann.get("/p").await;

    let r = ann.create_repo("p", "<script>x").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    r.assert_contains(&[
        "id=\"form-error\"",
        "name may only contain",
        "value=\"&#60;script&#62;x\"",
        "action=\"/p/-/repos\"",
        "Log out",
        "ann",
    ]);
    assert!(!r.body.contains(">Log in<") && !r.body.contains("<script>x"));
    let r = ann.create_repo("p", "r").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    r.assert_contains(&["p/r already exists: pick another name", "Log out"]);

    let r = ann.post("/p/-/members", &[("username", "nobody<i>")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    r.assert_contains(&[
        "no user named &#34;nobody&#60;i&#62;&#34;",
        "value=\"nobody&#60;i&#62;\"",
        "action=\"/p/-/members\"",
        "Log out",
    ]);
    // The form on that page works.
    let mut bob = app.client();
    bob.signup("bob", PW).await;
    let r = ann.post("/p/-/members", &[("username", "bob")]).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/p"));
    ann.get("/p").await.assert_contains(&["bob"]);
}

#[tokio::test]
async fn error_pages_keep_the_session_and_say_what_is_missing() {
    let app = TestApp::new(|_| {});
    let work = work_repo(app.dir.path(), &[("a.txt", b"a")], "first");
    let mut ann = ann_with_history(&app, &work).await;
    ann.create_project("secret", false).await;
    let mut bob = app.client();
    bob.signup("bob", PW).await;

    for (path, status, says) in [
        ("/team-a", StatusCode::NOT_FOUND, "no project team-a"),
        ("/p/web", StatusCode::NOT_FOUND, "no repository p/web"),
        (
            "/p/r/log/nobranch",
            StatusCode::NOT_FOUND,
            "no branch, tag or commit nobranch in p/r",
        ),
        (
            "/p/r/tree/main/missing.txt",
            StatusCode::NOT_FOUND,
            "no file or directory missing.txt at main in p/r",
        ),
        (
            "/p/r/raw/main/missing.txt",
            StatusCode::NOT_FOUND,
            "no file missing.txt at main in p/r",
        ),
        (
            "/p/r/commit/abcdef12",
            StatusCode::NOT_FOUND,
            "no branch, tag or commit abcdef12 in p/r",
        ),
        (
            "/p/r/commit/zz",
            StatusCode::BAD_REQUEST,
            "a commit id is 4 to 40 hex digits",
        ),
        (
            "/p/r/x/y/%3Cb%3Ez",
            StatusCode::NOT_FOUND,
            "no page at /p/r/x/y/%3Cb%3Ez",
        ),
        (
            "/logout",
            StatusCode::METHOD_NOT_ALLOWED,
            "this address does not answer GET: it is where a form sends what it posts",
        ),
    ] {
        let r = ann.get(path).await;
        assert_eq!(r.status, status, "{path}: {}", r.body);
        r.assert_contains(&[
            says,
            "Log out",
            "<span class=\"who\">ann</span>",
            "href=\"/static/style.css\"",
        ]);
        assert!(!r.body.contains(">Log in<"), "{path}");
    }
    let r = ann.get("/logout").await;
    assert_eq!(r.header("allow"), "POST");
    // 403 in the layout for a signed-in non-owner.
    let r = bob.get("/p/-/delete").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    r.assert_contains(&[
        "only the project owner may do that",
        "<span class=\"who\">bob</span>",
    ]);
    // A private project reads exactly like a missing one.
    let hidden = bob.get("/secret").await;
    let missing = bob.get("/secreu").await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
    assert!(
        hidden.body.contains("no project secret") && missing.body.contains("no project secreu")
    );
    assert_eq!(
        hidden.body.replace("secret", "X"),
        missing.body.replace("secreu", "X")
    );
    // A form that cannot be read is an error page too, not plain text.
    let r = ann.post("/p/-/repos", &[]).await;
    assert!(r.status.is_client_error());
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    r.assert_contains(&["Log out"]);
}

#[tokio::test]
async fn login_link_returns_to_the_page_and_only_to_this_site() {
    let app = TestApp::new(|_| {});
    let work = work_repo(app.dir.path(), &[("a.txt", b"a")], "first");
    let mut ann = ann_with_history(&app, &work).await;
    ann.post("/logout", &[]).await;

    // The header's "Log in" carries the page; logging in comes back to it.
    let page = ann.get("/p/r/tree/main").await;
    page.assert_contains(&["href=\"/login?next=%2Fp%2Fr%2Ftree%2Fmain\" id=\"login-link\""]);
    let form = ann.get("/login?next=%2Fp%2Fr%2Ftree%2Fmain").await;
    form.assert_contains(&["name=\"next\" value=\"/p/r/tree/main\""]);
    let r = ann
        .post(
            "/login",
            &[
                ("username", "ann"),
                ("password", PW),
                ("next", "/p/r/tree/main"),
            ],
        )
        .await;
    assert_eq!(
        (r.status, r.location()),
        (StatusCode::SEE_OTHER, "/p/r/tree/main")
    );
    // Logged in already: /login goes to `next`, never to another site.
    for (next, to) in [
        ("%2Fp%2Fr", "/p/r"),
        ("%2F%2Fevil.com", "/"),
        ("https%3A%2F%2Fevil.com", "/"),
        ("%2F%5Cevil.com", "/"),
    ] {
        let r = ann.get(&format!("/login?next={next}")).await;
        assert_eq!(
            (r.status, r.location()),
            (StatusCode::SEE_OTHER, to),
            "{next}"
        );
    }
}

#[tokio::test]
async fn autonix_reload_delete_wording_and_the_clone_copy_button() {
    let app = TestApp::new(|_| {});
    let work = work_repo(app.dir.path(), &[("a.txt", b"a")], "first");
    let mut ann = ann_with_history(&app, &work).await;
    // A reload of the generated-flake page (GET) goes back to the repository.
    let r = ann.get("/p/r/autonix").await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/p/r"));
    let r = ann.get("/p/nope/autonix").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    r.assert_contains(&["no repository p/nope"]);

    // The scan's warnings are listed apart from what is left to decide.
    std::fs::write(
        work.join("Cargo.toml"),
        "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(work.join("src")).unwrap();
    std::fs::write(work.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::os::unix::fs::symlink("nowhere/<b>", work.join("dangling")).unwrap();
    git(&work, &["add", "-A"]);
    commit_at(&work, "a crate and a dangling link", 1_600_000_300);
    app.push_direct(&work, "p", "r");
    ann.get("/p/r").await;
    let r = ann.post("/p/r/autonix", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let warnings = &r.body[r
        .body
        .find("id=\"autonix-warnings\"")
        .expect("a warnings list")..];
    let warnings = &warnings[..warnings.find("</ul>").unwrap()];
    assert!(
        warnings.contains("dangling") && warnings.contains("broken symbolic link"),
        "{warnings}"
    );
    r.assert_contains(&["id=\"autonix-found\"", "hello"]);
    let undecided = r
        .body
        .find("id=\"autonix-undecided\"")
        .map(|i| &r.body[i..]);
    assert!(undecided.is_none_or(|u| !u[..u.find("</ul>").unwrap()].contains("warning:")));

    let d = ann.get("/p/r/delete").await;
    d.assert_contains(&[
        "This removes the repository and its whole history (every branch and tag) from disk.",
    ]);
    assert!(!d.body.contains("its repositories"));
    let d = ann.get("/p/-/delete").await;
    d.assert_contains(&["This removes the project with all its repositories"]);

    let repo = ann.get("/p/r").await;
    repo.assert_contains(&[
        "id=\"clone-url\" value=\"http://repohub.test/p/r.git\" readonly",
        "id=\"copy-clone\" data-copy=\"clone-url\"",
        "src=\"/static/copy.js\"",
    ]);
    let js = ann.get("/static/copy.js").await;
    assert_eq!(js.status, StatusCode::OK);
    js.assert_contains(&["clipboard", "data-copy"]);
}
