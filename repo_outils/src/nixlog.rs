//! Parser for nix's `--log-format internal-json` stderr: each line is
//! `@nix {json}` with an `action` of `msg`, `start`, `stop` or `result`.
//! Callers turn the events into human lines for a job log and into
//! progress figures (builds done / expected, bytes copied).

use std::collections::HashMap;

use serde::Deserialize;

/// Activity types nix 2.8 reports in `start` (src/libutil/logging.hh).
pub mod activity {
    pub const COPY_PATH: u64 = 100;
    pub const FILE_TRANSFER: u64 = 101;
    pub const REALISE: u64 = 102;
    pub const COPY_PATHS: u64 = 103;
    pub const BUILDS: u64 = 104;
    pub const BUILD: u64 = 105;
    pub const SUBSTITUTE: u64 = 108;
}

/// Result types nix 2.8 reports in `result`.
pub mod result {
    pub const BUILD_LOG_LINE: u64 = 101;
    pub const SET_PHASE: u64 = 104;
    pub const PROGRESS: u64 = 105;
    pub const SET_EXPECTED: u64 = 106;
    pub const POST_BUILD_LOG_LINE: u64 = 107;
}

/// One decoded `@nix` line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum LogEvent {
    /// A message; level 0 is an error, 1 a warning, higher is chatter.
    Msg {
        level: u64,
        msg: String,
    },
    Start {
        id: u64,
        #[serde(default)]
        level: u64,
        #[serde(rename = "type", default)]
        kind: u64,
        #[serde(default)]
        text: String,
        #[serde(default)]
        parent: u64,
        #[serde(default)]
        fields: Vec<serde_json::Value>,
    },
    Stop {
        id: u64,
    },
    Result {
        id: u64,
        #[serde(rename = "type")]
        kind: u64,
        #[serde(default)]
        fields: Vec<serde_json::Value>,
    },
}

/// Outcome of parsing one stderr line.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Event(LogEvent),
    /// A line that is not `@nix …` (nix prints some plain text even in
    /// internal-json mode, and builders' stray output).
    Plain(String),
}

/// Parses one line of stderr. Never fails: a malformed `@nix` line comes
/// back as `Plain` so nothing nix said is lost.
pub fn parse_line(line: &str) -> Line {
    let line = line.trim_end_matches(['\n', '\r']);
    match line.strip_prefix("@nix ") {
        Some(json) => match serde_json::from_str::<LogEvent>(json) {
            Ok(ev) => Line::Event(ev),
            Err(_) => Line::Plain(line.to_owned()),
        },
        None => Line::Plain(line.to_owned()),
    }
}

/// Removes ANSI escape sequences (nix colours error messages).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters then one final byte in @..~.
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Build progress as nix reports it: derivations built / expected and
/// bytes copied / expected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub builds_done: u64,
    pub builds_expected: u64,
    pub builds_failed: u64,
    pub copy_done_bytes: u64,
    pub copy_expected_bytes: u64,
}

/// Folds events into human log lines and progress figures. Keeps the
/// names of running activities so a build log line can say which
/// derivation printed it.
#[derive(Debug, Default)]
pub struct Renderer {
    activities: HashMap<u64, (u64, String)>,
    pub progress: Progress,
}

impl Renderer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The human lines for one stderr line (zero or one today), and
    /// updates `progress`. Chatty messages (level > 3) are dropped.
    pub fn render(&mut self, line: &str) -> Option<String> {
        match parse_line(line) {
            Line::Plain(s) if s.trim().is_empty() => None,
            Line::Plain(s) => Some(strip_ansi(&s)),
            Line::Event(ev) => self.event(ev),
        }
    }

    fn event(&mut self, ev: LogEvent) -> Option<String> {
        match ev {
            LogEvent::Msg { level, msg } if level <= 3 => Some(strip_ansi(&msg)),
            LogEvent::Msg { .. } => None,
            LogEvent::Start { id, kind, text, .. } => {
                let shown = matches!(
                    kind,
                    activity::BUILD | activity::COPY_PATH | activity::SUBSTITUTE
                ) && !text.is_empty();
                self.activities.insert(id, (kind, text.clone()));
                shown.then(|| strip_ansi(&text))
            }
            LogEvent::Stop { id } => {
                self.activities.remove(&id);
                None
            }
            LogEvent::Result { id, kind, fields } => {
                let num = |i: usize| {
                    fields
                        .get(i)
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0)
                };
                match kind {
                    result::BUILD_LOG_LINE | result::POST_BUILD_LOG_LINE => {
                        let text = fields.first().and_then(|v| v.as_str()).unwrap_or_default();
                        let who = self
                            .activities
                            .get(&id)
                            .map(|(_, t)| drv_name(t))
                            .unwrap_or_default();
                        Some(if who.is_empty() {
                            strip_ansi(text)
                        } else {
                            format!("{who}> {}", strip_ansi(text))
                        })
                    }
                    result::PROGRESS => {
                        match self.activities.get(&id).map(|(k, _)| *k) {
                            Some(activity::BUILDS) => {
                                self.progress.builds_done = num(0);
                                self.progress.builds_expected = num(1);
                                self.progress.builds_failed = num(3);
                            }
                            Some(activity::COPY_PATHS) => {
                                self.progress.copy_done_bytes = num(0);
                                self.progress.copy_expected_bytes = num(1);
                            }
                            _ => {}
                        }
                        None
                    }
                    result::SET_EXPECTED => {
                        if num(0) == activity::BUILD {
                            self.progress.builds_expected = num(1);
                        }
                        None
                    }
                    _ => None,
                }
            }
        }
    }
}

/// `building '/nix/store/…-web-disk.img.drv'` → `web-disk.img`.
fn drv_name(text: &str) -> String {
    let Some(start) = text.find("/nix/store/") else {
        return String::new();
    };
    let rest = &text[start + "/nix/store/".len()..];
    let end = rest.find(['\'', ' ']).unwrap_or(rest.len());
    let base = &rest[..end];
    let base = base.strip_suffix(".drv").unwrap_or(base);
    base.split_once('-')
        .map(|(_, n)| n.to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines recorded from `nix build --log-format internal-json -L` (2.8).
    const START_BUILDS: &str =
        r#"@nix {"action":"start","id":1,"level":5,"parent":0,"text":"","type":104}"#;
    const START_BUILD: &str = r#"@nix {"action":"start","fields":["/nix/store/3r77v9zqi98h5pcc59d3qn7gi57z64gq-web-disk.img.drv","",1,1],"id":2,"level":3,"parent":0,"text":"building '/nix/store/3r77v9zqi98h5pcc59d3qn7gi57z64gq-web-disk.img.drv'","type":105}"#;
    const LOG_LINE: &str =
        r#"@nix {"action":"result","fields":["build failed on purpose"],"id":2,"type":101}"#;
    const PROGRESS: &str = r#"@nix {"action":"result","fields":[1,3,1,0],"id":1,"type":105}"#;
    const ERROR: &str = "@nix {\"action\":\"msg\",\"column\":null,\"file\":null,\"level\":0,\"line\":null,\"msg\":\"\\u001b[31;1merror:\\u001b[0m builder for '\\u001b[35;1m/nix/store/x.drv\\u001b[0m' failed with exit code 1\",\"raw_msg\":\"builder failed\"}";

    #[test]
    fn parses_each_action() {
        assert!(matches!(
            parse_line(START_BUILD),
            Line::Event(LogEvent::Start {
                id: 2,
                kind: 105,
                ..
            })
        ));
        assert_eq!(
            parse_line(r#"@nix {"action":"stop","id":2}"#),
            Line::Event(LogEvent::Stop { id: 2 })
        );
        assert!(matches!(
            parse_line(ERROR),
            Line::Event(LogEvent::Msg { level: 0, .. })
        ));
        assert_eq!(
            parse_line("warning: Git tree is dirty"),
            Line::Plain("warning: Git tree is dirty".into())
        );
        // Malformed JSON is kept as text, not lost.
        assert!(matches!(parse_line("@nix {broken"), Line::Plain(_)));
    }

    #[test]
    fn renders_build_lines_errors_and_progress() {
        let mut r = Renderer::new();
        assert_eq!(r.render(START_BUILDS), None);
        assert_eq!(
            r.render(START_BUILD).as_deref(),
            Some("building '/nix/store/3r77v9zqi98h5pcc59d3qn7gi57z64gq-web-disk.img.drv'")
        );
        assert_eq!(
            r.render(LOG_LINE).as_deref(),
            Some("web-disk.img> build failed on purpose")
        );
        assert_eq!(r.render(PROGRESS), None);
        assert_eq!(r.progress.builds_done, 1);
        assert_eq!(r.progress.builds_expected, 3);
        assert_eq!(
            r.render(ERROR).as_deref(),
            Some("error: builder for '/nix/store/x.drv' failed with exit code 1")
        );
        assert_eq!(
            r.render(r#"@nix {"action":"msg","level":5,"msg":"chatter"}"#),
            None
        );
    }
}
