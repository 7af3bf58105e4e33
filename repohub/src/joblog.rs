//! Bounded views of CI job logs: a job's log may be gigabytes, so repohub
//! never reads one whole. The job page keeps only the tail of the stream;
//! the log proxy passes a bounded prefix; both say "log truncated" where
//! they cut.

use axum::body::Body;

/// The line before a log's tail when its head was cut.
pub const LOG_TRUNCATED: &str = "[log truncated: earlier lines are not shown]\n";
/// The line after a log's head when its rest was cut.
pub const REST_TRUNCATED: &str = "[log truncated: the rest is not shown here]\n";

/// The last `max` bytes of a log body, read as it streams (memory stays
/// at about `2 × max`), starting at a line boundary and preceded by
/// [`LOG_TRUNCATED`] when anything was cut.
pub async fn tail(body: Body, max: usize) -> Result<String, axum::Error> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut cut = false;
    while let Some(data) = stream.next().await {
        buf.extend_from_slice(&data?);
        if buf.len() > 2 * max {
            buf.drain(..buf.len() - max);
            cut = true;
        }
    }
    if buf.len() > max {
        buf.drain(..buf.len() - max);
        cut = true;
    }
    if !cut {
        return Ok(String::from_utf8_lossy(&buf).into_owned());
    }
    // Start at a whole line, unless the tail is one huge line.
    let start = buf.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    Ok(format!(
        "{LOG_TRUNCATED}{}",
        String::from_utf8_lossy(&buf[start..])
    ))
}

/// A log body passed through until `max` bytes, then ended with a
/// "log truncated" line (the rest stays at ci_service).
pub fn capped(
    body: Body,
    max: u64,
) -> impl futures::Stream<Item = Result<bytes::Bytes, axum::Error>> + Send + 'static {
    use futures::StreamExt;
    let stream = body.into_data_stream();
    futures::stream::unfold(
        (stream, 0u64, false),
        move |(mut stream, sent, done)| async move {
            if done {
                return None;
            }
            let item = match stream.next().await? {
                Err(e) => return Some((Err(e), (stream, sent, true))),
                Ok(d) => d,
            };
            let room = max.saturating_sub(sent);
            if (item.len() as u64) <= room {
                let n = sent + item.len() as u64;
                return Some((Ok(item), (stream, n, false)));
            }
            let mut out = item.slice(..room as usize).to_vec();
            out.extend_from_slice(format!("\n{REST_TRUNCATED}").as_bytes());
            Some((Ok(bytes::Bytes::from(out)), (stream, max, true)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn body_of(chunks: Vec<&'static str>) -> Body {
        Body::from_stream(futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from(c))),
        ))
    }

    #[tokio::test]
    async fn a_short_log_is_whole_and_a_long_one_keeps_its_last_lines() {
        let t = tail(body_of(vec!["a\n", "b\n"]), 100).await.unwrap();
        assert_eq!(t, "a\nb\n");
        let lines: Vec<&'static str> = (0..1000)
            .map(|i| &*Box::leak(format!("line {i:04}\n").into_boxed_str()))
            .collect();
        let t = tail(body_of(lines), 100).await.unwrap();
        assert!(t.starts_with(LOG_TRUNCATED), "{t}");
        assert!(t.ends_with("line 0999\n"));
        assert!(t.len() <= 100 + LOG_TRUNCATED.len());
        assert!(t[LOG_TRUNCATED.len()..].starts_with("line "), "{t}");
    }

    #[tokio::test]
    async fn the_proxy_stops_at_its_bound_and_says_so() {
        let out: Vec<bytes::Bytes> = capped(body_of(vec!["0123456789"; 100]), 25)
            .map(Result::unwrap)
            .collect()
            .await;
        let all: Vec<u8> = out.concat();
        let text = String::from_utf8(all).unwrap();
        assert!(text.starts_with("0123456789012345678901234\n"));
        assert!(text.ends_with(REST_TRUNCATED));
        assert_eq!(text.len(), 26 + REST_TRUNCATED.len());
        let whole: Vec<bytes::Bytes> = capped(body_of(vec!["ab", "cd"]), 4)
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(whole.concat(), b"abcd");
    }
}
