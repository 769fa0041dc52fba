//! Splits a policy file at its top-level table headers so that the pieces can be parsed
//! separately: in parallel, and without the TOML parser ever holding the syntax tree of a
//! whole large file (it needs about fifty times the file's size for that).
//!
//! A split is exact for every file our schema accepts: a line whose first non-blank
//! character is `[` and whose last (before a comment) is `]` can only be a table header,
//! because the schema's arrays hold strings, never arrays. The one construct that can hide
//! such a line is a multi-line string, so a file containing `"""` or `'''` is not split.
//! An invalid file may be split differently than a whole-file parse would see it, but it
//! stays invalid, and every error keeps its true position.

use std::ops::Range;

/// Files smaller than this are parsed whole: splitting would not pay for itself.
const SPLIT_ABOVE_BYTES: usize = 64 * 1024;

fn is_header(line: &str) -> bool {
    let line = line.trim_start();
    if !line.starts_with('[') || line.contains(['"', '\'']) {
        return false;
    }
    let code = line.split('#').next().unwrap_or("").trim_end();
    code.ends_with(']')
}

/// Byte ranges of the pieces of `text`, in order, together covering all of it.
pub fn split(text: &str) -> Vec<Range<usize>> {
    if text.len() < SPLIT_ABOVE_BYTES || text.contains("\"\"\"") || text.contains("'''") {
        let whole = 0..text.len();
        return vec![whole];
    }
    let mut starts = vec![0];
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if offset > 0 && is_header(line) {
            starts.push(offset);
        }
        offset += line.len();
    }
    let mut ranges: Vec<Range<usize>> = starts.windows(2).map(|w| w[0]..w[1]).collect();
    ranges.push(starts[starts.len() - 1]..text.len());
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big(body: &str) -> String {
        let mut text = String::from(body);
        while text.len() < SPLIT_ABOVE_BYTES {
            text.push_str("# padding comment line to pass the split threshold\n");
        }
        text
    }

    #[test]
    fn splits_at_headers_and_covers_the_whole_text() {
        let text = big(
            "a = 1\n[segments.a]\ncidrs = [\n  \"198.18.1.0/24\",\n]\n  [[allow]] # x\nid = \"r\"\n",
        );
        let pieces = split(&text);
        assert_eq!(pieces.len(), 3);
        assert!(text[pieces[1].clone()].starts_with("[segments.a]"));
        assert!(text[pieces[2].clone()].starts_with("  [[allow]]"));
        assert_eq!(pieces.first().unwrap().start, 0);
        assert_eq!(pieces.last().unwrap().end, text.len());
        assert!(pieces.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn never_splits_files_with_multi_line_strings_or_small_files() {
        let text =
            big("[segments.a]\ndescription = \"\"\"\n[not a header]\n\"\"\"\n[segments.b]\n");
        assert_eq!(split(&text).len(), 1);
        assert_eq!(split("[a]\n[b]\n").len(), 1);
    }

    #[test]
    fn quoted_keys_and_values_are_not_headers() {
        assert!(!is_header("[\"segments\".a]"));
        assert!(!is_header("ports = [\"80/tcp\"]"));
        assert!(is_header("[[deny]]   # comment"));
    }
}
