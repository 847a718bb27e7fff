//! How deep and how long an expression may be, checked on its text before the CEL parser
//! sees it.
//!
//! The `cel` crate's parser (ANTLR) recurses through eight grammar rules for each level of
//! brackets; its parse tree, its AST, our checker and the core's evaluation recurse once
//! per operator of a chain like `a + b + c` or `s.f().g()` (each a left-deep tree).
//! Measured in a debug build: a level of brackets takes 110–175 KiB of stack in the parser
//! (a list literal the most), an operator of a chain 1.5 KiB there, 7–13 KiB in the
//! checker and about 11 KiB in the evaluation; the rest of a pathway's compilation 311 KiB.
//! A guard with a dozen nested brackets overflowed the 2 MiB stack of a tokio worker (the
//! server died), a chain of a thousand `+` any thread's. Within both limits the costliest
//! guard (six nested lists around a chain) compiles and runs in 1.26 MiB:
//! `tests/mistakes.rs` checks every shape at the limits on a 2 MiB thread whose caller
//! already took 640 KiB (the HTTP API and the engine call the compiler with 108–150 KiB
//! used). A nested conditional (`a ? b : c ? d : e`) recurses too (9 KiB a level in the
//! parser) and counts as a level; a run of `!` or `-` is one node and does not.

/// At most this many levels of brackets (`(`, `[`, `{`) and conditionals (`c ? a : b`,
/// whose last branch may hold another) one inside another: `f((a + b) * 2)` has two,
/// `a ? b : c ? d : e` two as well.
pub const MAX_NESTING: usize = 6;

/// At most this many operators that chain (`+ - * / % == != < <= > >= in`, `.` and
/// `x[i]`) in one expression; `&&`, `||` and `!` do not count (the parser balances
/// `&&` and `||`, and a run of `!` is one node).
pub const MAX_OPERATORS: usize = 64;

/// A limit an expression passes, and where (a byte offset in the expression).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Excess {
    /// One level of nesting too many, opened at this offset.
    Nesting(usize),
    /// One operator too many, at this offset.
    Operators(usize),
}

/// The first limit `text` passes, if any. Strings (`'…'`, `"…"`, triple-quoted, raw
/// `r"…"`, bytes `b"…"`) and `//` comments are skipped; an expression CEL cannot lex
/// is counted as far as it goes (the parser then reports what is wrong).
pub(crate) fn excess(text: &str) -> Option<Excess> {
    let b = text.as_bytes();
    // The conditionals open at each bracket level (the outermost first).
    let mut levels: Vec<usize> = vec![0];
    let mut depth = 0usize;
    let mut operators = 0usize;
    // Whether the previous token ends an operand (`x[` indexes, `[` alone is a list).
    let mut after_operand = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let mut operand = false;
        let mut operator = false;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' | 0x0c => {
                i += 1;
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |p| i + p);
                continue;
            }
            b'\'' | b'"' => {
                i = string_end(b, i, false);
                operand = true;
            }
            b'`' => {
                i = b[i + 1..]
                    .iter()
                    .position(|&x| x == b'`')
                    .map_or(b.len(), |p| i + 1 + p + 1);
                operand = true;
            }
            b'0'..=b'9' => {
                i = number_end(b, i);
                operand = true;
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) && !after_operand => {
                i = number_end(b, i);
                operand = true;
            }
            c if c == b'_' || c.is_ascii_alphabetic() => match word(b, i) {
                Word::String(end) => {
                    i = end;
                    operand = true;
                }
                Word::Name(end) if &text[i..end] == "in" => {
                    i = end;
                    operator = true;
                }
                Word::Name(end) => {
                    i = end;
                    operand = true;
                }
            },
            b'(' | b'[' | b'{' => {
                operator = c == b'[' && after_operand;
                depth += 1;
                levels.push(0);
                if depth > MAX_NESTING {
                    return Some(Excess::Nesting(start));
                }
                i += 1;
            }
            b')' | b']' | b'}' => {
                if levels.len() > 1 {
                    let open = levels.pop().unwrap_or(0);
                    depth -= open + 1;
                }
                operand = true;
                i += 1;
            }
            b'?' => {
                if let Some(top) = levels.last_mut() {
                    *top += 1;
                }
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(Excess::Nesting(start));
                }
                i += 1;
            }
            b',' => {
                // The next list element or argument: the conditionals of this one end.
                if let Some(top) = levels.last_mut() {
                    depth -= *top;
                    *top = 0;
                }
                i += 1;
            }
            b'&' | b'|' => {
                i += if b.get(i + 1) == Some(&c) { 2 } else { 1 };
            }
            b'!' if b.get(i + 1) != Some(&b'=') => i += 1,
            b'=' | b'!' | b'<' | b'>' => {
                i += if b.get(i + 1) == Some(&b'=') { 2 } else { 1 };
                operator = true;
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'.' => {
                i += 1;
                operator = true;
            }
            _ => {
                // `:` and anything CEL cannot lex (the parser reports it).
                i += text[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if operator {
            operators += 1;
            if operators > MAX_OPERATORS {
                return Some(Excess::Operators(start));
            }
        }
        after_operand = operand;
    }
    None
}

/// What starts with a letter or `_`.
pub(super) enum Word {
    /// A name or keyword, ending there.
    Name(usize),
    /// A string literal with a prefix (`r"…"`, `b'…'`), ending there.
    String(usize),
}

/// The word starting at `at` (a letter or `_`).
pub(super) fn word(b: &[u8], at: usize) -> Word {
    let end = at
        + b[at..]
            .iter()
            .position(|&x| !(x == b'_' || x.is_ascii_alphanumeric()))
            .unwrap_or(b.len() - at);
    let prefix = &b[at..end];
    let quote = b.get(end).is_some_and(|&q| q == b'\'' || q == b'"');
    if quote
        && matches!(
            prefix,
            b"r" | b"R" | b"b" | b"B" | b"br" | b"bR" | b"Br" | b"BR"
        )
    {
        Word::String(string_end(
            b,
            end,
            prefix.iter().any(|c| matches!(c, b'r' | b'R')),
        ))
    } else {
        Word::Name(end)
    }
}

/// The end of the string literal whose opening quote is at `at`.
pub(super) fn string_end(b: &[u8], at: usize, raw: bool) -> usize {
    let q = b[at];
    let triple = b.get(at + 1) == Some(&q) && b.get(at + 2) == Some(&q);
    let mut i = at + if triple { 3 } else { 1 };
    while i < b.len() {
        match b[i] {
            b'\\' if !raw => i += 2,
            x if x == q && (!triple || (b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q))) => {
                return i + if triple { 3 } else { 1 };
            }
            b'\n' | b'\r' if !triple => return i,
            _ => i += 1,
        }
    }
    b.len()
}

/// The end of the number starting at `at` (`12`, `1.5`, `.5`, `2e-3`, `0x1F`, `3u`).
fn number_end(b: &[u8], at: usize) -> usize {
    let mut i = at;
    while i < b.len() {
        let c = b[i];
        let exponent_sign = (c == b'+' || c == b'-')
            && i > at
            && matches!(b[i - 1], b'e' | b'E')
            && !b[at..i].starts_with(b"0x")
            && b.get(i + 1).is_some_and(u8::is_ascii_digit);
        let fraction = c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit);
        if c.is_ascii_alphanumeric() || c == b'_' || exponent_sign || fraction {
            i += 1;
        } else {
            break;
        }
    }
    i
}
