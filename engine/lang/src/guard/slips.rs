//! The usual slips of someone who writes SQL, Python or spreadsheets before CEL: `and`,
//! `or`, `not`, `=`, `=>`, `<>`, a single `&` or `|`. The CEL parser answers them with a
//! token it did not expect; after a parse error, [`first`] finds the first such slip
//! (outside strings and comments) so the diagnostic can say what to write instead, at
//! the slip's place.

use super::limits::{Word, string_end, word};

/// A slip: where (a byte offset in the expression), what was written, what CEL writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slip {
    /// Byte offset of the slip in the expression.
    pub(crate) at: usize,
    /// What was written.
    pub(crate) written: &'static str,
    /// What CEL writes for it.
    pub(crate) instead: &'static str,
}

/// The first slip in `text`, if any.
pub(crate) fn first(text: &str) -> Option<Slip> {
    let b = text.as_bytes();
    let slip = |at, written, instead| {
        Some(Slip {
            at,
            written,
            instead,
        })
    };
    let mut i = 0;
    // Whether the previous token was a `.` (a field may be called `or`).
    let mut after_dot = false;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let dot = c == b'.';
        match c {
            b'/' if next == Some(b'/') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |p| i + p);
            }
            b'\'' | b'"' => i = string_end(b, i, false),
            b'`' => {
                i = b[i + 1..]
                    .iter()
                    .position(|&x| x == b'`')
                    .map_or(b.len(), |p| i + 1 + p + 1);
            }
            c if c == b'_' || c.is_ascii_alphabetic() => match word(b, i) {
                Word::String(end) => i = end,
                Word::Name(end) => {
                    if !after_dot {
                        match text[i..end].to_ascii_lowercase().as_str() {
                            "and" => return slip(i, "and", "&&"),
                            "or" => return slip(i, "or", "||"),
                            "not" => return slip(i, "not", "!"),
                            _ => {}
                        }
                    }
                    i = end;
                }
            },
            b'=' => match next {
                Some(b'>') => return slip(i, "=>", ">="),
                Some(b'<') => return slip(i, "=<", "<="),
                Some(b'=') if b.get(i + 2) == Some(&b'=') => return slip(i, "===", "=="),
                Some(b'=') => i += 2,
                _ => return slip(i, "=", "=="),
            },
            b'<' if next == Some(b'>') => return slip(i, "<>", "!="),
            b'!' | b'<' | b'>' => i += if next == Some(b'=') { 2 } else { 1 },
            b'&' | b'|' if next == Some(c) => i += 2,
            b'&' => return slip(i, "&", "&&"),
            b'|' => return slip(i, "|", "||"),
            _ => i += text[i..].chars().next().map_or(1, char::len_utf8),
        }
        if !matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
            after_dot = dot;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Option<(usize, &'static str, &'static str)> {
        first(text).map(|s| (s.at, s.written, s.instead))
    }

    #[test]
    fn words_and_operators_of_other_languages_are_found_where_they_are() {
        assert_eq!(found("a > 1 and b"), Some((6, "and", "&&")));
        assert_eq!(found("a OR b"), Some((2, "or", "||")));
        assert_eq!(found("not a"), Some((0, "not", "!")));
        assert_eq!(found("event.value => 5.5"), Some((12, "=>", ">=")));
        assert_eq!(found("x =< 2"), Some((2, "=<", "<=")));
        assert_eq!(found("event.code = \"E11\""), Some((11, "=", "==")));
        assert_eq!(found("a === b"), Some((2, "===", "==")));
        assert_eq!(found("a <> b"), Some((2, "<>", "!=")));
        assert_eq!(found("a & b"), Some((2, "&", "&&")));
        assert_eq!(found("a | b"), Some((2, "|", "||")));
    }

    #[test]
    fn cel_itself_strings_comments_and_fields_are_not_slips() {
        for ok in [
            "a == 1 && b != 2 || !c",
            "a <= 1 && b >= 2 && c < 3 && d > 4",
            "event.code == \"a and b = c\"",
            "'or' in ['and', \"not\"]",
            "r\"x = y\" == s",
            "a // and this = that\n && b",
            "event.or > 1 && event. and == 2",
            "android == order && nothing",
        ] {
            assert_eq!(found(ok), None, "{ok}");
        }
    }
}
