//! README rendering: CommonMark to HTML, then sanitised with ammonia so
//! scripts, event handlers and `javascript:` links in a README are inert.

use pulldown_cmark::{Options, Parser, html};

pub fn render(md: &str) -> String {
    let opts = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let mut out = String::with_capacity(md.len() * 3 / 2);
    html::push_html(&mut out, Parser::new_ext(md, opts));
    ammonia::Builder::default()
        .link_rel(Some("noopener noreferrer nofollow"))
        .clean(&out)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn markdown_is_rendered_and_sanitised() {
        let h = render(
            "# Title\n\n<script>alert(1)</script>\n\n[x](javascript:alert(1)) <img src=x onerror=alert(1)>\n\n*ok*",
        );
        assert!(h.contains("<h1>Title</h1>"));
        assert!(h.contains("<em>ok</em>"));
        assert!(!h.contains("<script"));
        assert!(!h.contains("javascript:"));
        assert!(!h.contains("onerror"));
    }
}
