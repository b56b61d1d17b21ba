//! Reading a child's pipes line by line without ever holding an unbounded line in memory, and the
//! run-wide budget of output bytes forwarded to the observer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One line as read: its first bytes (at most the cap the reader was given) and its full length.
#[derive(Debug, Default)]
pub(crate) struct Line {
    pub(crate) bytes: Vec<u8>,
    /// Length of the whole line in bytes, without its `\n` (and `\r`).
    pub(crate) total_len: usize,
}

impl Line {
    /// Whether `bytes` holds the whole line.
    pub(crate) fn is_complete(&self) -> bool {
        self.bytes.len() == self.total_len
    }
}

/// How much of a line to keep: `base` bytes, or up to `extended` when the first `base` bytes
/// satisfy `extend_if` (used to keep the CLI's — possibly large — final `result` line whole).
pub(crate) struct Caps<'a> {
    pub(crate) base: usize,
    pub(crate) extended: usize,
    pub(crate) extend_if: &'a (dyn Fn(&[u8]) -> bool + Send + Sync),
}

/// Reads the next line from `reader`, keeping at most the bytes `caps` allow and counting (then
/// discarding) the rest. `Ok(None)` at end of input. A final line without `\n` is returned too.
pub(crate) async fn read_line<R>(reader: &mut R, caps: &Caps<'_>) -> std::io::Result<Option<Line>>
where
    R: AsyncBufRead + Unpin,
{
    let mut line = Line::default();
    let mut cap = caps.base;
    let mut decided = caps.extended <= caps.base;
    let mut saw_any = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            break;
        }
        saw_any = true;
        let newline = buf.iter().position(|&b| b == b'\n');
        let take = newline.unwrap_or(buf.len());
        let room = cap.saturating_sub(line.bytes.len());
        line.bytes.extend_from_slice(&buf[..take.min(room)]);
        line.total_len += take;
        if !decided && line.bytes.len() >= caps.base {
            decided = true;
            if (caps.extend_if)(&line.bytes) {
                cap = caps.extended;
                // Bytes of this chunk past the base cap were counted but not kept; keep them now.
                let kept_from_chunk = take.min(room);
                let more = take.saturating_sub(kept_from_chunk);
                let room2 = cap.saturating_sub(line.bytes.len());
                line.bytes
                    .extend_from_slice(&buf[kept_from_chunk..kept_from_chunk + more.min(room2)]);
            }
        }
        let consumed = take + usize::from(newline.is_some());
        reader.consume(consumed);
        if newline.is_some() {
            break;
        }
    }
    if !saw_any {
        return Ok(None);
    }
    if line.bytes.last() == Some(&b'\r') && line.is_complete() {
        line.bytes.pop();
        line.total_len -= 1;
    }
    Ok(Some(line))
}

/// `bytes` as text cut to at most `max` bytes on a character boundary, with a
/// `… [truncated N bytes]` marker when anything of the line (`total_len` bytes long) was cut.
pub(crate) fn bounded_text(bytes: &[u8], total_len: usize, max: usize) -> String {
    let mut prefix = &bytes[..bytes.len().min(max)];
    let cut = total_len > prefix.len();
    if cut {
        // Do not end on half a UTF-8 sequence.
        if let Err(e) = std::str::from_utf8(prefix) {
            if e.error_len().is_none() {
                prefix = &prefix[..e.valid_up_to()];
            }
        }
    }
    let mut text = String::from_utf8_lossy(prefix).into_owned();
    // Lossy decoding can grow the text (U+FFFD is 3 bytes); cut back on a boundary.
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    if cut {
        text.push_str(&format!("… [truncated {} bytes]", total_len - prefix.len()));
    }
    text
}

/// The last `cap` bytes of a stream of lines (the stderr tail used to classify a run).
#[derive(Debug)]
pub(crate) struct Tail {
    text: String,
    cap: usize,
}

impl Tail {
    pub(crate) fn new(cap: usize) -> Self {
        Tail {
            text: String::new(),
            cap,
        }
    }

    pub(crate) fn push_line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        if self.text.len() > self.cap.saturating_mul(2) {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.text.len() <= self.cap {
            return;
        }
        let mut start = self.text.len() - self.cap;
        while !self.text.is_char_boundary(start) {
            start += 1;
        }
        self.text.drain(..start);
    }

    pub(crate) fn into_string(mut self) -> String {
        self.trim();
        self.text
    }
}

/// The run-wide limit on bytes of output forwarded to the observer (stdout and stderr together).
#[derive(Debug)]
pub(crate) struct OutputBudget {
    used: AtomicUsize,
    max: usize,
    exhausted: AtomicBool,
    /// Lines offered so far, forwarded or not: tells whether the readers are still making
    /// progress.
    seen: AtomicUsize,
}

/// What to do with a line, according to the budget.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Forward,
    /// The budget just ran out: say so once, then drop.
    JustExhausted,
    Drop,
}

impl OutputBudget {
    pub(crate) fn new(max: usize) -> Self {
        OutputBudget {
            used: AtomicUsize::new(0),
            max,
            exhausted: AtomicBool::new(false),
            seen: AtomicUsize::new(0),
        }
    }

    pub(crate) fn admit(&self, len: usize) -> Admit {
        self.seen.fetch_add(1, Ordering::Relaxed);
        if self.exhausted.load(Ordering::Acquire) {
            return Admit::Drop;
        }
        let before = self.used.fetch_add(len, Ordering::AcqRel);
        if before.saturating_add(len) <= self.max {
            return Admit::Forward;
        }
        if self.exhausted.swap(true, Ordering::AcqRel) {
            Admit::Drop
        } else {
            Admit::JustExhausted
        }
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Lines offered so far.
    pub(crate) fn seen(&self) -> usize {
        self.seen.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: &[u8]) -> bool {
        false
    }

    async fn read_all(input: &[u8], base: usize, extended: usize) -> Vec<(String, usize)> {
        let extend_if = |b: &[u8]| b.starts_with(b"R");
        let caps = Caps {
            base,
            extended,
            extend_if: &extend_if,
        };
        let mut reader = tokio::io::BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        while let Some(line) = read_line(&mut reader, &caps).await.unwrap() {
            out.push((String::from_utf8(line.bytes).unwrap(), line.total_len));
        }
        out
    }

    #[tokio::test]
    async fn lines_are_cut_at_the_cap_and_counted() {
        let out = read_all(b"short\nabcdefghijklmnop\r\n\nlast", 8, 8).await;
        assert_eq!(
            out,
            vec![
                ("short".to_string(), 5),
                ("abcdefgh".to_string(), 17),
                (String::new(), 0),
                ("last".to_string(), 4),
            ]
        );
    }

    #[tokio::test]
    async fn lines_matching_the_predicate_keep_the_extended_cap() {
        let out = read_all(b"Rabcdefghijkl\nXabcdefghijkl\n", 4, 10).await;
        assert_eq!(
            out,
            vec![("Rabcdefghi".to_string(), 13), ("Xabc".to_string(), 13)]
        );
        let caps = Caps {
            base: 4,
            extended: 4,
            extend_if: &never,
        };
        let mut reader = tokio::io::BufReader::new(&b""[..]);
        assert!(read_line(&mut reader, &caps).await.unwrap().is_none());
    }

    #[test]
    fn bounded_text_marks_cuts_on_char_boundaries() {
        assert_eq!(bounded_text(b"hello", 5, 10), "hello");
        assert_eq!(
            bounded_text(b"hello world", 11, 5),
            "hello… [truncated 6 bytes]"
        );
        // "é" is two bytes: cutting in its middle drops it whole.
        let s = "aé".as_bytes();
        assert_eq!(bounded_text(&s[..2], 3, 2), "a… [truncated 2 bytes]");
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut tail = Tail::new(10);
        for i in 0..100 {
            tail.push_line(&format!("line {i}"));
        }
        let text = tail.into_string();
        assert!(text.len() <= 10);
        assert!(text.ends_with("line 99\n"));
    }

    #[test]
    fn budget_admits_until_exhausted_then_reports_once() {
        let budget = OutputBudget::new(10);
        assert_eq!(budget.admit(6), Admit::Forward);
        assert_eq!(budget.admit(4), Admit::Forward);
        assert_eq!(budget.admit(1), Admit::JustExhausted);
        assert_eq!(budget.admit(0), Admit::Drop);
        assert_eq!(budget.max(), 10);
    }
}
