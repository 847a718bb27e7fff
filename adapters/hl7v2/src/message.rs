//! parcours' own view of a parsed message: the tree of segments, fields, repetitions,
//! components and subcomponents as byte ranges into the normalised text, whatever parser
//! built it, with escape sequences decoded on read.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use crate::charset::Charset;
use crate::error::Location;
use crate::guard::{GuardedMessage, Separators};
use crate::parse::ParseError;

/// A segment as a parser delivers it: byte ranges into [`GuardedMessage::text`].
/// `fields[0]` is field 1 (for MSH: MSH-1, the field separator).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentNode {
    /// The three-character name.
    pub name: Range<usize>,
    /// Its fields.
    pub fields: Vec<FieldNode>,
}

/// A field: its repetitions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldNode {
    /// The whole field.
    pub range: Range<usize>,
    /// Its repetitions (at least one when the field is present).
    pub repetitions: Vec<RepetitionNode>,
}

/// A repetition: its components.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepetitionNode {
    /// The whole repetition.
    pub range: Range<usize>,
    /// Its components.
    pub components: Vec<ComponentNode>,
}

/// A component: its subcomponents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ComponentNode {
    /// The whole component.
    pub range: Range<usize>,
    /// Its subcomponents.
    pub subcomponents: Vec<Range<usize>>,
}

/// A parsed message. Its `Debug` shows the structure's size, never the text.
#[derive(Clone)]
pub struct Message {
    text: String,
    separators: Separators,
    charset: Charset,
    segments: Vec<SegmentNode>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("bytes", &self.text.len())
            .field("segments", &self.segments.len())
            .finish()
    }
}

fn check_range(text: &str, r: &Range<usize>) -> Result<(), ParseError> {
    if text.get(r.clone()).is_some() {
        Ok(())
    } else {
        Err(ParseError::Internal {
            reason: "a parser returned a range outside the message",
        })
    }
}

impl Message {
    /// Assemble a message from a guarded text and the segment tree a parser built for
    /// it. Every range is checked to lie within the text on character boundaries.
    pub fn from_parts(
        guarded: GuardedMessage,
        segments: Vec<SegmentNode>,
    ) -> Result<Message, ParseError> {
        let text = guarded.text();
        for s in &segments {
            check_range(text, &s.name)?;
            for f in &s.fields {
                check_range(text, &f.range)?;
                for r in &f.repetitions {
                    check_range(text, &r.range)?;
                    for c in &r.components {
                        check_range(text, &c.range)?;
                        for sc in &c.subcomponents {
                            check_range(text, sc)?;
                        }
                    }
                }
            }
        }
        if segments.first().and_then(|s| text.get(s.name.clone())) != Some("MSH") {
            return Err(ParseError::Internal {
                reason: "a parser returned a tree that does not start with MSH",
            });
        }
        Ok(Message {
            separators: *guarded.separators(),
            charset: guarded.charset(),
            text: guarded.text().to_owned(),
            segments,
        })
    }

    /// The normalised text (segments separated by CR).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The delimiters.
    pub fn separators(&self) -> &Separators {
        &self.separators
    }

    /// The character set the message was decoded from.
    pub fn charset(&self) -> Charset {
        self.charset
    }

    fn slice(&self, r: &Range<usize>) -> &str {
        self.text.get(r.clone()).unwrap_or_default()
    }

    /// All segments in order.
    pub fn segments(&self) -> impl Iterator<Item = Seg<'_>> {
        let mut counts: Vec<(&str, u32)> = Vec::new();
        self.segments.iter().map(move |node| {
            let name = self.slice(&node.name);
            let occurrence = match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => {
                    *c += 1;
                    *c
                }
                None => {
                    counts.push((name, 1));
                    1
                }
            };
            Seg {
                msg: self,
                node,
                name,
                occurrence,
            }
        })
    }

    /// The first segment with this name.
    pub fn segment(&self, name: &str) -> Option<Seg<'_>> {
        self.segments().find(|s| s.name == name)
    }

    /// The MSH segment.
    pub fn msh(&self) -> Seg<'_> {
        // `from_parts` guarantees the first segment is MSH.
        let node = &self.segments[0];
        Seg {
            msg: self,
            node,
            name: "MSH",
            occurrence: 1,
        }
    }

    /// Decode escape sequences in a raw value (see [`unescape`]).
    pub fn decode<'a>(&self, raw: &'a str) -> Cow<'a, str> {
        unescape(raw, &self.separators, self.charset)
    }
}

/// Decode HL7 escape sequences: `\F\ \S\ \T\ \R\ \E\` (the delimiters), `\P\` (the
/// truncation character), `\Xhh…\` (bytes in the message's character set), `\.br\` and
/// `\.sp\` (line breaks); other formatting (`\H\ \N\ \.in\ …`), locally defined (`\Z…\`)
/// and character-set switching (`\C…\ \M…\`) sequences are dropped; an unterminated or
/// unknown sequence is kept as written.
pub fn unescape<'a>(raw: &'a str, seps: &Separators, charset: Charset) -> Cow<'a, str> {
    let esc = seps.escape;
    if !raw.contains(esc) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find(esc) {
        out.push_str(&rest[..start]);
        let after = &rest[start + esc.len_utf8()..];
        let Some(end) = after.find(esc) else {
            // Unterminated: keep as written.
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let seq = &after[..end];
        match seq {
            "F" => out.push(seps.field),
            "S" => out.push(seps.component),
            "T" => out.push(seps.subcomponent),
            "R" => out.push(seps.repetition),
            "E" => out.push(esc),
            "P" => out.extend(seps.truncation),
            "H" | "N" => {}
            "" => out.push(esc),
            s if s.starts_with(".br") || s.starts_with(".sp") => out.push('\n'),
            s if s.starts_with('.') => {}
            s if s.starts_with('Z') || s.starts_with('C') || s.starts_with('M') => {}
            s if s.starts_with('X') && s.len() > 1 && s.len() % 2 == 1 => {
                match decode_hex(&s[1..]) {
                    Some(bytes) => out.extend(
                        charset
                            .decode_lossy(&bytes)
                            .chars()
                            .filter(|c| !c.is_control() || matches!(c, '\r' | '\n' | '\t')),
                    ),
                    None => {
                        out.push(esc);
                        out.push_str(s);
                        out.push(esc);
                    }
                }
            }
            s => {
                out.push(esc);
                out.push_str(s);
                out.push(esc);
            }
        }
        rest = &after[end + esc.len_utf8()..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    b.chunks(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(*pair.get(1)?).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

/// What reading a value gives: the decoded, trimmed text, or `None` when it is empty or
/// the HL7 null `""`.
fn present(decoded: Cow<'_, str>) -> Option<String> {
    let t = decoded.trim();
    if t.is_empty() || t == "\"\"" {
        None
    } else {
        Some(t.to_owned())
    }
}

/// A segment of a message.
#[derive(Clone, Copy, Debug)]
pub struct Seg<'a> {
    msg: &'a Message,
    node: &'a SegmentNode,
    name: &'a str,
    occurrence: u32,
}

/// A position being read, kept cheap (no allocation) until an error needs a [`Location`].
#[derive(Clone, Copy, Debug)]
struct Pos<'a> {
    segment: &'a str,
    occurrence: u32,
    field: u16,
    repetition: u16,
    component: u16,
    subcomponent: u16,
}

impl Pos<'_> {
    fn location(&self) -> Location {
        Location {
            segment: self.segment.to_owned(),
            occurrence: self.occurrence,
            field: self.field,
            repetition: self.repetition,
            component: self.component,
            subcomponent: self.subcomponent,
        }
    }
}

fn idx(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

impl<'a> Seg<'a> {
    /// The segment name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// Which occurrence of this segment name (1-based).
    pub fn occurrence(&self) -> u32 {
        self.occurrence
    }

    /// Where this segment is.
    pub fn location(&self) -> Location {
        Location::segment(self.name, self.occurrence)
    }

    /// Field `n` (1-based; MSH-1 is the field separator). Absent fields read as empty.
    pub fn field(&self, n: usize) -> Field<'a> {
        Field {
            msg: self.msg,
            node: n.checked_sub(1).and_then(|i| self.node.fields.get(i)),
            pos: Pos {
                segment: self.name,
                occurrence: self.occurrence,
                field: idx(n),
                repetition: 1,
                component: 0,
                subcomponent: 0,
            },
        }
    }
}

/// A field of a segment.
#[derive(Clone, Copy, Debug)]
pub struct Field<'a> {
    msg: &'a Message,
    node: Option<&'a FieldNode>,
    pos: Pos<'a>,
}

/// A repetition of a field.
#[derive(Clone, Copy, Debug)]
pub struct Rep<'a> {
    msg: &'a Message,
    node: Option<&'a RepetitionNode>,
    pos: Pos<'a>,
}

/// A component of a repetition.
#[derive(Clone, Copy, Debug)]
pub struct Comp<'a> {
    msg: &'a Message,
    node: Option<&'a ComponentNode>,
    pos: Pos<'a>,
}

/// A subcomponent of a component.
#[derive(Clone, Copy, Debug)]
pub struct Sub<'a> {
    msg: &'a Message,
    range: Option<&'a Range<usize>>,
    pos: Pos<'a>,
}

macro_rules! value_methods {
    ($ty:ident, $range:expr) => {
        impl<'a> $ty<'a> {
            /// The raw text, escape sequences not decoded (empty when absent).
            pub fn raw(&self) -> &'a str {
                let range: Option<&Range<usize>> = $range(self);
                range.map_or("", |r| self.msg.slice(r))
            }

            /// The text with escape sequences decoded.
            pub fn text(&self) -> Cow<'a, str> {
                self.msg.decode(self.raw())
            }

            /// The decoded, trimmed text; `None` when empty or the HL7 null `""`.
            pub fn value(&self) -> Option<String> {
                present(self.text())
            }

            /// Whether there is nothing here.
            pub fn is_empty(&self) -> bool {
                self.raw().trim().is_empty()
            }

            /// Where this is, for error messages and ERR-2.
            pub fn location(&self) -> Location {
                self.pos.location()
            }
        }
    };
}

value_methods!(Field, |s: &Field<'a>| s.node.map(|n| &n.range));
value_methods!(Rep, |s: &Rep<'a>| s.node.map(|n| &n.range));
value_methods!(Comp, |s: &Comp<'a>| s.node.map(|n| &n.range));
value_methods!(Sub, |s: &Sub<'a>| s.range);

impl<'a> Field<'a> {
    /// Repetition `n` (1-based).
    pub fn rep(&self, n: usize) -> Rep<'a> {
        Rep {
            msg: self.msg,
            node: self
                .node
                .and_then(|f| n.checked_sub(1).and_then(|i| f.repetitions.get(i))),
            pos: Pos {
                repetition: idx(n),
                ..self.pos
            },
        }
    }

    /// All repetitions (none when the field is absent).
    pub fn reps(&self) -> impl Iterator<Item = Rep<'a>> + 'a {
        let this = *self;
        let count = self.node.map_or(0, |f| f.repetitions.len());
        (1..=count).map(move |n| this.rep(n))
    }

    /// Component `n` of the first repetition.
    pub fn comp(&self, n: usize) -> Comp<'a> {
        self.rep(1).comp(n)
    }
}

impl<'a> Rep<'a> {
    /// Component `n` (1-based).
    pub fn comp(&self, n: usize) -> Comp<'a> {
        Comp {
            msg: self.msg,
            node: self
                .node
                .and_then(|r| n.checked_sub(1).and_then(|i| r.components.get(i))),
            pos: Pos {
                component: idx(n),
                ..self.pos
            },
        }
    }
}

impl<'a> Comp<'a> {
    /// Subcomponent `n` (1-based).
    pub fn sub(&self, n: usize) -> Sub<'a> {
        Sub {
            msg: self.msg,
            range: self
                .node
                .and_then(|c| n.checked_sub(1).and_then(|i| c.subcomponents.get(i))),
            pos: Pos {
                subcomponent: idx(n),
                ..self.pos
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_decode() {
        let s = Separators::default();
        let d = |raw| unescape(raw, &s, Charset::Utf8).into_owned();
        assert_eq!(d(r"10\S\9/L"), "10^9/L");
        assert_eq!(d(r"CBC \T\ Auto"), "CBC & Auto");
        assert_eq!(d(r"a\F\b\R\c\E\d"), "a|b~c\\d");
        assert_eq!(d(r"\XC3A9\t\X0A\"), "ét\n");
        assert_eq!(d(r"l1\.br\l2\H\bold\N\"), "l1\nl2bold");
        assert_eq!(d(r"unterminated\F"), r"unterminated\F");
        assert_eq!(d(r"é\F\ü"), "é|ü");
        assert_eq!(unescape(r"\XE9\", &s, Charset::Latin1), "é");
        assert_eq!(d(r"\XZZ\"), r"\XZZ\");
    }
}
