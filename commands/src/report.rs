//! The one printer of error chains, used where an error leaves the program
//! (a `main`, a log line, an RPC failure message).
//!
//! The rule it relies on: an error's message never repeats its source's
//! message, so the chain is every link's message joined with ": ", without
//! guessing duplicates.

/// `outer: inner: innermost`: `e`'s message followed by each `source()`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("reading the spec")]
        Read(#[source] std::io::Error),
    }

    #[test]
    fn joins_every_link_once() {
        let e = Outer::Read(std::io::Error::other("disk on fire"));
        assert_eq!(error_chain(&e), "reading the spec: disk on fire");
        let lone = std::io::Error::other("alone");
        assert_eq!(error_chain(&lone), "alone");
    }
}
