//! Parsing behind a small trait, so the parser can be replaced: [`Parser`] turns a
//! [`GuardedMessage`] into a [`SegmentNode`] tree; [`Message::from_parts`] checks it.
//! [`Hl7ParserCrate`] is the implementation on the `hl7-parser` crate (0.3).
//!
//! Only the structure comes from the parser: escape sequences are decoded by parcours'
//! own [`unescape`](crate::message::unescape) (`hl7-parser`'s decoder indexes strings by
//! character count and is not safe on non-ASCII text).

use std::fmt;
use std::ops::Range;

use crate::error::Location;
use crate::guard::GuardedMessage;
use crate::message::{ComponentNode, FieldNode, Message, RepetitionNode, SegmentNode};

/// Why a parser could not read a message that passed the guard.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The parser stopped before the end of the message.
    #[error("segment {segment} could not be parsed")]
    Segment {
        /// 1-based segment number.
        segment: usize,
    },
    /// The parser returned something inconsistent.
    #[error("parser error: {reason}")]
    Internal {
        /// What was wrong.
        reason: &'static str,
    },
}

impl ParseError {
    /// ERR-2, when known.
    pub fn location(&self) -> Option<Location> {
        None
    }
}

/// A parser of HL7 v2 structure.
pub trait Parser: Send + Sync + fmt::Debug {
    /// Build the segment tree of a guarded message: byte ranges into
    /// [`GuardedMessage::text`], MSH first, `fields[0]` = field 1.
    fn parse(&self, message: &GuardedMessage) -> Result<Vec<SegmentNode>, ParseError>;
}

/// Guard-checked bytes to a [`Message`] with the given parser.
pub fn parse_with(parser: &dyn Parser, guarded: GuardedMessage) -> Result<Message, ParseError> {
    let segments = parser.parse(&guarded)?;
    Message::from_parts(guarded, segments)
}

/// The `hl7-parser` crate (0.3) as a [`Parser`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Hl7ParserCrate;

impl Parser for Hl7ParserCrate {
    fn parse(&self, message: &GuardedMessage) -> Result<Vec<SegmentNode>, ParseError> {
        let text = message.text();
        let parsed =
            hl7_parser::Message::parse(text).map_err(|_| ParseError::Segment { segment: 1 })?;
        let consumed = parsed.raw_value().len();
        if consumed < text.len() {
            // The parser stops silently at the first segment it cannot read.
            let segment = text
                .get(..consumed)
                .map_or(1, |done| done.matches('\r').count() + 1);
            return Err(ParseError::Segment { segment });
        }
        let s = message.separators();
        let p = &parsed.separators;
        if (p.field, p.component, p.repetition, p.escape, p.subcomponent)
            != (s.field, s.component, s.repetition, s.escape, s.subcomponent)
        {
            return Err(ParseError::Internal {
                reason: "the parser read other delimiters than the guard",
            });
        }
        Ok(parsed
            .segments
            .iter()
            .map(|seg| convert(text, seg))
            .collect())
    }
}

/// The range of `part` inside `whole` (both slices of the same string).
fn offset_of(whole: &str, part: &str) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    start..start + part.len()
}

fn convert(text: &str, seg: &hl7_parser::message::Segment<'_>) -> SegmentNode {
    SegmentNode {
        name: offset_of(text, seg.name),
        fields: seg
            .fields
            .iter()
            .map(|f| FieldNode {
                range: offset_of(text, f.raw_value()),
                repetitions: f
                    .repeats
                    .iter()
                    .map(|r| RepetitionNode {
                        range: offset_of(text, r.raw_value()),
                        components: r
                            .components
                            .iter()
                            .map(|c| ComponentNode {
                                range: offset_of(text, c.raw_value()),
                                subcomponents: c
                                    .subcomponents
                                    .iter()
                                    .map(|sc| offset_of(text, sc.raw_value()))
                                    .collect(),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charset::Charset;
    use crate::guard::{Caps, check_message};

    #[test]
    fn the_tree_matches_the_text() {
        let g = check_message(
            b"MSH|^~\\&|APP|FAC\rPID|1||123^^^HOSP&1.2.3&ISO^PI~456^^^X^MR||N\\S\\M",
            &Caps::default(),
            Charset::Utf8,
        )
        .expect("guard");
        let m = parse_with(&Hl7ParserCrate, g).expect("parse");
        let msh = m.msh();
        assert_eq!(msh.field(1).raw(), "|");
        assert_eq!(msh.field(2).raw(), "^~\\&");
        assert_eq!(msh.field(4).raw(), "FAC");
        let pid = m.segment("PID").expect("pid");
        let cx = pid.field(3);
        assert_eq!(cx.reps().count(), 2);
        assert_eq!(cx.rep(1).comp(4).sub(2).raw(), "1.2.3");
        assert_eq!(cx.rep(2).comp(5).value().as_deref(), Some("MR"));
        assert_eq!(pid.field(5).text(), "N^M");
        assert!(pid.field(40).is_empty());
        assert_eq!(
            pid.field(40).rep(3).comp(2).location().to_string(),
            "PID-40[3].2"
        );
    }
}
