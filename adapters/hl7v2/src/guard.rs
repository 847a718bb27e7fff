//! The pre-parse guard: what every byte string goes through before any parser sees it.
//!
//! A parser builds a tree node per delimiter: a 2 MB message made of `|` and `^` can cost
//! hundreds of MiB in any HL7 parser. The guard bounds that work with [`Caps`] checked on
//! the raw text in one linear pass, and refuses what is not an HL7 v2 message:
//!
//! - a UTF-8 byte-order mark is stripped; leading CR/LF are skipped;
//! - NUL and other C0 control bytes (except TAB, CR, LF) are refused with their offset;
//! - the text must start with `MSH`, then a field separator and 4 encoding characters
//!   (5 from v2.7: the truncation character, which is dropped before parsing), all
//!   distinct, printable, not letters or digits;
//! - MSH-18 picks the character set ([`Charset`]); bytes that are not valid in it are
//!   refused;
//! - CR, LF and CRLF segment terminators are all accepted and normalised to CR; blank
//!   lines are dropped;
//! - every segment starts with a three-character name (`[A-Z0-9]{3}`) and the field
//!   separator; a second `MSH` or a batch envelope segment (`FHS`, `BHS`, `BTS`, `FTS`)
//!   in one message is refused: split files and batches with [`split_batch`] first;
//! - each limit exceeded is named in the error (`max_segments` …).

use std::fmt;

use crate::charset::Charset;
use crate::error::{ErrorCode, Location};

/// Limits checked before parsing. The defaults suit real ADT and ORU traffic with a wide
/// margin (a 300-result ORU is far below them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Largest message, in bytes (default 1 MiB).
    pub max_message_bytes: usize,
    /// Most segments in one message (default 5 000).
    pub max_segments: usize,
    /// Most fields in one segment (default 256).
    pub max_fields_per_segment: usize,
    /// Most repetitions of one field (default 100).
    pub max_repetitions_per_field: usize,
    /// Most delimiters (field, component, subcomponent, repetition) in one segment
    /// (default 4 096).
    pub max_delimiters_per_segment: usize,
    /// Most delimiters in a whole message (default 100 000).
    pub max_delimiters_per_message: usize,
    /// Largest batch or file given to [`split_batch`], in bytes (default 64 MiB).
    pub max_batch_bytes: usize,
    /// Most messages in one batch or file (default 10 000).
    pub max_messages_per_batch: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            max_message_bytes: 1024 * 1024,
            max_segments: 5_000,
            max_fields_per_segment: 256,
            max_repetitions_per_field: 100,
            max_delimiters_per_segment: 4_096,
            max_delimiters_per_message: 100_000,
            max_batch_bytes: 64 * 1024 * 1024,
            max_messages_per_batch: 10_000,
        }
    }
}

/// The delimiters of a message, from MSH-1 and MSH-2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Separators {
    /// MSH-1, usually `|`.
    pub field: char,
    /// Usually `^`.
    pub component: char,
    /// Usually `~`.
    pub repetition: char,
    /// Usually `\`.
    pub escape: char,
    /// Usually `&`.
    pub subcomponent: char,
    /// The v2.7+ truncation character (`#`), if MSH-2 declared one.
    pub truncation: Option<char>,
}

impl Default for Separators {
    fn default() -> Separators {
        Separators {
            field: '|',
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
            truncation: None,
        }
    }
}

impl Separators {
    /// MSH-2 as it would be written: component, repetition, escape, subcomponent
    /// (and truncation).
    pub fn encoding_characters(&self) -> String {
        let mut s: String = [
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ]
        .into_iter()
        .collect();
        if let Some(t) = self.truncation {
            s.push(t);
        }
        s
    }

    /// Whether `c` is one of the delimiters (not the truncation character).
    pub fn is_delimiter(&self, c: char) -> bool {
        c == self.field || c == self.component || c == self.repetition || c == self.subcomponent
    }

    /// Escape a value so it can be written into a field (`|` → `\F\`, …; CR and LF as
    /// `\X0D\` and `\X0A\`).
    pub fn escape(&self, value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        let e = self.escape;
        for c in value.chars() {
            match c {
                c if c == e => out.extend([e, 'E', e]),
                c if c == self.field => out.extend([e, 'F', e]),
                c if c == self.component => out.extend([e, 'S', e]),
                c if c == self.subcomponent => out.extend([e, 'T', e]),
                c if c == self.repetition => out.extend([e, 'R', e]),
                '\r' => out.extend([e, 'X', '0', 'D', e]),
                '\n' => out.extend([e, 'X', '0', 'A', e]),
                c if c.is_control() => {}
                c => out.push(c),
            }
        }
        out
    }
}

/// A message that passed the guard: decoded, CR-terminated, within the caps.
#[derive(Clone)]
pub struct GuardedMessage {
    text: String,
    separators: Separators,
    charset: Charset,
    segments: usize,
}

impl fmt::Debug for GuardedMessage {
    /// Never shows the text (patient data).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedMessage")
            .field("bytes", &self.text.len())
            .field("segments", &self.segments)
            .field("separators", &self.separators)
            .field("charset", &self.charset)
            .finish()
    }
}

impl GuardedMessage {
    /// The normalised text: segments separated by CR, no trailing CR, MSH-2 holding
    /// exactly four encoding characters.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The delimiters.
    pub fn separators(&self) -> &Separators {
        &self.separators
    }

    /// The character set the bytes were decoded from.
    pub fn charset(&self) -> Charset {
        self.charset
    }

    /// How many segments.
    pub fn segment_count(&self) -> usize {
        self.segments
    }
}

/// Why the guard refused bytes. Positions are given as byte offsets or 1-based segment
/// numbers; the bytes themselves never appear.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// Nothing but a BOM or blank lines.
    #[error("empty message")]
    Empty,
    /// More bytes than `max_message_bytes`.
    #[error("message is {size} bytes, over the limit of {limit} (max_message_bytes)")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A batch or file larger than `max_batch_bytes`.
    #[error("batch is {size} bytes, over the limit of {limit} (max_batch_bytes)")]
    BatchTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A NUL or other control byte.
    #[error("control byte 0x{byte:02x} at offset {offset}: not allowed in an HL7 message")]
    ControlByte {
        /// The byte.
        byte: u8,
        /// Where.
        offset: usize,
    },
    /// The text does not begin with `MSH`.
    #[error("message does not start with an MSH segment")]
    NotMsh,
    /// MSH-1 / MSH-2 are not usable delimiters.
    #[error("MSH-1/MSH-2 encoding characters are invalid: {reason}")]
    EncodingCharacters {
        /// What is wrong.
        reason: &'static str,
    },
    /// MSH-18 names a character set parcours cannot decode.
    #[error(
        "character set (MSH-18) is not supported: use UNICODE UTF-8, ASCII, 8859/1, 8859/15 or CP1252"
    )]
    UnsupportedCharset,
    /// Bytes that are not valid in the declared (or default) character set.
    #[error("byte at offset {offset} is not valid {charset} (MSH-18 or the configured default)")]
    InvalidEncoding {
        /// The character set.
        charset: Charset,
        /// Where.
        offset: usize,
    },
    /// More segments than `max_segments`.
    #[error("message has more than {limit} segments (max_segments)")]
    TooManySegments {
        /// The limit.
        limit: usize,
    },
    /// A segment with more fields than `max_fields_per_segment`.
    #[error("segment {segment} ({name}) has more than {limit} fields (max_fields_per_segment)")]
    TooManyFields {
        /// 1-based segment number.
        segment: usize,
        /// Its name.
        name: String,
        /// The limit.
        limit: usize,
    },
    /// A field with more repetitions than `max_repetitions_per_field`.
    #[error(
        "{name}-{field} (segment {segment}) has more than {limit} repetitions (max_repetitions_per_field)"
    )]
    TooManyRepetitions {
        /// 1-based segment number.
        segment: usize,
        /// Its name.
        name: String,
        /// The field number.
        field: usize,
        /// The limit.
        limit: usize,
    },
    /// A segment with more delimiters than `max_delimiters_per_segment`.
    #[error(
        "segment {segment} ({name}) has more than {limit} delimiters (max_delimiters_per_segment)"
    )]
    TooManyDelimiters {
        /// 1-based segment number.
        segment: usize,
        /// Its name.
        name: String,
        /// The limit.
        limit: usize,
    },
    /// A message with more delimiters than `max_delimiters_per_message`.
    #[error("message has more than {limit} delimiters (max_delimiters_per_message)")]
    TooManyDelimitersInMessage {
        /// The limit.
        limit: usize,
    },
    /// A line that does not start with a segment name and the field separator.
    #[error(
        "segment {segment} does not start with a three-character segment name and the field separator"
    )]
    BadSegment {
        /// 1-based segment number.
        segment: usize,
    },
    /// A second `MSH`: two messages where one was expected.
    #[error(
        "segment {segment} is a second MSH: one message per frame (split files and batches first)"
    )]
    SecondMessage {
        /// 1-based segment number.
        segment: usize,
    },
    /// A batch envelope segment inside one message.
    #[error("segment {segment} is a batch envelope segment {name}: split files and batches first")]
    BatchEnvelope {
        /// 1-based segment number.
        segment: usize,
        /// `FHS`, `BHS`, `BTS` or `FTS`.
        name: String,
    },
    /// More messages in a batch than `max_messages_per_batch`.
    #[error("batch has more than {limit} messages (max_messages_per_batch)")]
    TooManyMessages {
        /// The limit.
        limit: usize,
    },
    /// A batch trailer that does not count the messages found (a truncated file).
    #[error("batch trailer BTS-1 declares {declared} messages, {found} found")]
    BatchCount {
        /// BTS-1.
        declared: usize,
        /// Messages since the BHS.
        found: usize,
    },
    /// Content outside any message in a file.
    #[error(
        "line {line}: content outside any message (neither a segment of a message, a comment nor a blank line)"
    )]
    OutsideMessage {
        /// 1-based line number.
        line: usize,
    },
}

impl GuardError {
    /// ERR-3 for this refusal.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            GuardError::Empty
            | GuardError::NotMsh
            | GuardError::BadSegment { .. }
            | GuardError::SecondMessage { .. }
            | GuardError::BatchEnvelope { .. }
            | GuardError::OutsideMessage { .. }
            | GuardError::BatchCount { .. } => ErrorCode::SegmentSequence,
            GuardError::ControlByte { .. }
            | GuardError::EncodingCharacters { .. }
            | GuardError::UnsupportedCharset
            | GuardError::InvalidEncoding { .. } => ErrorCode::DataType,
            GuardError::TooLarge { .. }
            | GuardError::BatchTooLarge { .. }
            | GuardError::TooManySegments { .. }
            | GuardError::TooManyFields { .. }
            | GuardError::TooManyRepetitions { .. }
            | GuardError::TooManyDelimiters { .. }
            | GuardError::TooManyDelimitersInMessage { .. }
            | GuardError::TooManyMessages { .. } => ErrorCode::ApplicationError,
        }
    }

    /// ERR-2 for this refusal, when it names a segment.
    pub fn location(&self) -> Option<Location> {
        match self {
            GuardError::EncodingCharacters { .. } => Some(Location::field("MSH", 1, 2)),
            GuardError::UnsupportedCharset => Some(Location::field("MSH", 1, 18)),
            GuardError::TooManyFields { name, .. } | GuardError::TooManyDelimiters { name, .. } => {
                Some(Location::segment(name, 0))
            }
            GuardError::TooManyRepetitions { name, field, .. } => Some(Location::field(
                name,
                0,
                u16::try_from(*field).unwrap_or(u16::MAX),
            )),
            _ => None,
        }
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

fn strip_bom(raw: &[u8]) -> (&[u8], usize) {
    match raw.strip_prefix(BOM) {
        Some(rest) => (rest, BOM.len()),
        None => (raw, 0),
    }
}

fn is_forbidden_control(b: u8) -> bool {
    b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')
}

/// Check one message (an MLLP frame, a file holding one message) and normalise it.
///
/// `default_charset` decodes messages whose MSH-18 is empty.
pub fn check_message(
    raw: &[u8],
    caps: &Caps,
    default_charset: Charset,
) -> Result<GuardedMessage, GuardError> {
    if raw.len() > caps.max_message_bytes {
        return Err(GuardError::TooLarge {
            size: raw.len(),
            limit: caps.max_message_bytes,
        });
    }
    let (bytes, bom) = strip_bom(raw);
    let lead = bytes
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(bytes.len());
    let bytes = &bytes[lead..];
    let base = bom + lead;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(GuardError::Empty);
    }
    if let Some(i) = bytes.iter().position(|&b| is_forbidden_control(b)) {
        return Err(GuardError::ControlByte {
            byte: bytes[i],
            offset: base + i,
        });
    }
    if !bytes.starts_with(b"MSH") {
        return Err(GuardError::NotMsh);
    }
    let (separators, encoding_len) = read_separators(bytes)?;
    let charset = match msh18(bytes, &separators) {
        None => default_charset,
        Some(name) => Charset::from_msh18(&name).ok_or(GuardError::UnsupportedCharset)?,
    };
    let text = charset
        .decode(bytes)
        .map_err(|e| GuardError::InvalidEncoding {
            charset,
            offset: base + e.offset,
        })?;
    let (text, segments) = normalise(&text, &separators, encoding_len, caps)?;
    Ok(GuardedMessage {
        text,
        separators,
        charset,
        segments,
    })
}

fn usable_delimiter(b: u8) -> bool {
    b.is_ascii_graphic() && !b.is_ascii_alphanumeric()
}

/// MSH-1 and MSH-2; returns the separators and the length of MSH-2.
fn read_separators(bytes: &[u8]) -> Result<(Separators, usize), GuardError> {
    let bad = |reason| Err(GuardError::EncodingCharacters { reason });
    let Some(&field) = bytes.get(3) else {
        return bad("the segment ends after MSH");
    };
    if !usable_delimiter(field) {
        return bad("MSH-1 is not a printable punctuation character");
    }
    let encoding: Vec<u8> = bytes[4..]
        .iter()
        .take_while(|&&b| b != field && b != b'\r' && b != b'\n')
        .take(6)
        .copied()
        .collect();
    if encoding.len() < 4 {
        return bad(
            "MSH-2 must hold 4 encoding characters (component, repetition, escape, subcomponent)",
        );
    }
    if encoding.len() > 5 {
        return bad("MSH-2 holds more than 5 encoding characters");
    }
    if !encoding.iter().all(|&b| usable_delimiter(b)) {
        return bad("MSH-2 holds a character that is not printable punctuation");
    }
    let mut all = encoding.clone();
    all.push(field);
    all.sort_unstable();
    if all.windows(2).any(|w| w[0] == w[1]) {
        return bad("the delimiters are not all distinct");
    }
    let c = |i: usize| char::from(encoding[i]);
    Ok((
        Separators {
            field: char::from(field),
            component: c(0),
            repetition: c(1),
            escape: c(2),
            subcomponent: c(3),
            truncation: encoding.get(4).map(|&b| char::from(b)),
        },
        encoding.len(),
    ))
}

/// MSH-18 (first repetition, first component), read from the raw bytes before decoding
/// (delimiters are ASCII in every supported character set).
fn msh18(bytes: &[u8], seps: &Separators) -> Option<String> {
    let line_end = bytes
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(bytes.len());
    let line = &bytes[..line_end];
    let field = seps.field as u8;
    // Element 0 is "MSH", element 1 is MSH-2, element k is MSH-(k+1).
    let raw = line.split(|&b| b == field).nth(17)?;
    let first = raw
        .split(|&b| b == seps.repetition as u8 || b == seps.component as u8)
        .next()
        .unwrap_or_default();
    let name = String::from_utf8_lossy(first).trim().to_owned();
    (!name.is_empty()).then_some(name)
}

fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split(['\r', '\n'])
}

fn valid_name(line: &str) -> bool {
    line.len() >= 3
        && line
            .as_bytes()
            .iter()
            .take(3)
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// One linear pass: validate segment names, count delimiters, join with CR.
fn normalise(
    text: &str,
    seps: &Separators,
    encoding_len: usize,
    caps: &Caps,
) -> Result<(String, usize), GuardError> {
    let mut out = String::with_capacity(text.len());
    let mut segments = 0usize;
    let mut total_delims = 0usize;
    for line in split_lines(text) {
        if line.trim().is_empty() {
            continue;
        }
        segments += 1;
        if segments > caps.max_segments {
            return Err(GuardError::TooManySegments {
                limit: caps.max_segments,
            });
        }
        let seg = segments;
        if !valid_name(line) {
            return Err(GuardError::BadSegment { segment: seg });
        }
        let name = &line[..3];
        let after = &line[3..];
        if !(after.is_empty() || after.starts_with(seps.field)) {
            return Err(GuardError::BadSegment { segment: seg });
        }
        if seg > 1 && name == "MSH" {
            return Err(GuardError::SecondMessage { segment: seg });
        }
        if matches!(name, "FHS" | "BHS" | "BTS" | "FTS") {
            return Err(GuardError::BatchEnvelope {
                segment: seg,
                name: name.to_owned(),
            });
        }
        // The fields to count: for MSH, what follows MSH-2.
        let (body, first_field) = if seg == 1 {
            let skip = 1 + encoding_len;
            (after.get(skip..).unwrap_or(""), 3usize)
        } else {
            (after, 1usize)
        };
        let mut fields = first_field.saturating_sub(1);
        let mut reps = 1usize;
        let mut delims = 0usize;
        for c in body.chars() {
            if !seps.is_delimiter(c) {
                continue;
            }
            delims += 1;
            if c == seps.field {
                fields += 1;
                reps = 1;
                if fields > caps.max_fields_per_segment {
                    return Err(GuardError::TooManyFields {
                        segment: seg,
                        name: name.to_owned(),
                        limit: caps.max_fields_per_segment,
                    });
                }
            } else if c == seps.repetition {
                reps += 1;
                if reps > caps.max_repetitions_per_field {
                    return Err(GuardError::TooManyRepetitions {
                        segment: seg,
                        name: name.to_owned(),
                        field: fields,
                        limit: caps.max_repetitions_per_field,
                    });
                }
            }
            if delims > caps.max_delimiters_per_segment {
                return Err(GuardError::TooManyDelimiters {
                    segment: seg,
                    name: name.to_owned(),
                    limit: caps.max_delimiters_per_segment,
                });
            }
        }
        total_delims += delims;
        if total_delims > caps.max_delimiters_per_message {
            return Err(GuardError::TooManyDelimitersInMessage {
                limit: caps.max_delimiters_per_message,
            });
        }
        if !out.is_empty() {
            out.push('\r');
        }
        if seg == 1 && encoding_len == 5 {
            // Drop the truncation character from MSH-2: parsers expect four.
            out.push_str(&line[..8]);
            out.push_str(line.get(9..).unwrap_or(""));
        } else {
            out.push_str(line);
            if after.is_empty() {
                out.push(seps.field);
            }
        }
    }
    if segments == 0 {
        return Err(GuardError::Empty);
    }
    Ok((out, segments))
}

/// One message found in a file or batch by [`split_batch`].
#[derive(Clone)]
pub struct BatchEntry {
    /// The message's bytes, segments joined by CR (still to be checked by the guard).
    pub raw: Vec<u8>,
    /// The 1-based line of its MSH in the file.
    pub line: usize,
}

impl fmt::Debug for BatchEntry {
    /// Never shows the bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchEntry")
            .field("bytes", &self.raw.len())
            .field("line", &self.line)
            .finish()
    }
}

/// Split a file or an HL7 batch into messages.
///
/// Understands FHS/BHS … BTS/FTS envelopes (BTS-1, when present, must count the messages
/// of its batch), several messages one after another, blank lines, and comment lines
/// (`//`, `#`, `/* … */`) between them. Each entry must still pass [`check_message`]
/// (that is what [`Intake::process`](crate::Intake::process) does), so one bad message
/// does not sink its neighbours.
pub fn split_batch(raw: &[u8], caps: &Caps) -> Result<Vec<BatchEntry>, GuardError> {
    if raw.len() > caps.max_batch_bytes {
        return Err(GuardError::BatchTooLarge {
            size: raw.len(),
            limit: caps.max_batch_bytes,
        });
    }
    let (bytes, _) = strip_bom(raw);
    let mut entries: Vec<BatchEntry> = Vec::new();
    let mut current: Option<BatchEntry> = None;
    let mut in_comment = false;
    let mut since_bhs: Option<usize> = None;
    let mut line_no = 0usize;
    let push =
        |entries: &mut Vec<BatchEntry>, cur: &mut Option<BatchEntry>| -> Result<(), GuardError> {
            if let Some(e) = cur.take() {
                if entries.len() >= caps.max_messages_per_batch {
                    return Err(GuardError::TooManyMessages {
                        limit: caps.max_messages_per_batch,
                    });
                }
                entries.push(e);
            }
            Ok(())
        };
    let mut rest = bytes;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        let line = &rest[..end];
        let mut next = end;
        if rest.get(end) == Some(&b'\r') && rest.get(end + 1) == Some(&b'\n') {
            next += 2;
        } else if end < rest.len() {
            next += 1;
        }
        rest = &rest[next..];
        line_no += 1;

        let trimmed = line.trim_ascii();
        if in_comment {
            if contains(trimmed, b"*/") {
                in_comment = false;
            }
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with(b"//") || trimmed.starts_with(b"#") {
            continue;
        }
        if trimmed.starts_with(b"/*") {
            in_comment = !contains(&trimmed[2..], b"*/");
            continue;
        }
        let name = line.get(..3).unwrap_or(line);
        match name {
            b"MSH" => {
                let before = entries.len();
                push(&mut entries, &mut current)?;
                if let Some(n) = since_bhs.as_mut() {
                    *n += entries.len() - before;
                }
                current = Some(BatchEntry {
                    raw: line.to_vec(),
                    line: line_no,
                });
            }
            b"FHS" | b"BHS" | b"BTS" | b"FTS" => {
                let before = entries.len();
                push(&mut entries, &mut current)?;
                if let Some(n) = since_bhs.as_mut() {
                    *n += entries.len() - before;
                }
                match name {
                    b"BHS" => since_bhs = Some(0),
                    b"BTS" => {
                        if let (Some(found), Some(declared)) = (since_bhs, envelope_count(line))
                            && declared != found
                        {
                            return Err(GuardError::BatchCount { declared, found });
                        }
                        since_bhs = None;
                    }
                    _ => {}
                }
            }
            _ => match current.as_mut() {
                Some(entry) => {
                    entry.raw.push(b'\r');
                    entry.raw.extend_from_slice(line);
                }
                None => return Err(GuardError::OutsideMessage { line: line_no }),
            },
        }
    }
    // An open batch without trailer is allowed: BTS is optional.
    push(&mut entries, &mut current)?;
    Ok(entries)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// BTS-1: the batch message count, if present and numeric.
fn envelope_count(line: &[u8]) -> Option<usize> {
    let sep = *line.get(3)?;
    let raw = line.split(|&b| b == sep).nth(1)?;
    let s = std::str::from_utf8(raw).ok()?.trim();
    if s.is_empty() {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &[u8]) -> Result<GuardedMessage, GuardError> {
        check_message(raw, &Caps::default(), Charset::Utf8)
    }

    #[test]
    fn terminators_bom_and_blank_lines_are_normalised() {
        let m = check(b"\xEF\xBB\xBFMSH|^~\\&|A|B\r\nPID|1\n\nPV1|1\rZZZ").expect("ok");
        assert_eq!(m.text(), "MSH|^~\\&|A|B\rPID|1\rPV1|1\rZZZ|");
        assert_eq!(m.segment_count(), 4);
    }

    #[test]
    fn truncation_character_is_dropped() {
        let m = check(b"MSH|^~\\&#|A|B").expect("ok");
        assert_eq!(m.text(), "MSH|^~\\&|A|B");
        assert_eq!(m.separators().truncation, Some('#'));
    }

    #[test]
    fn refusals_name_their_reason() {
        assert_eq!(check(b"").err(), Some(GuardError::Empty));
        assert_eq!(check(b"PID|1").err(), Some(GuardError::NotMsh));
        assert_eq!(
            check(b"MSH|^~\\&|A\rBHS|^~\\&").err(),
            Some(GuardError::BatchEnvelope {
                segment: 2,
                name: "BHS".into()
            })
        );
        assert_eq!(
            check(b"MSH|^~\\&|A\rPID 1").err(),
            Some(GuardError::BadSegment { segment: 2 })
        );
        assert!(matches!(
            check(b"MSH|^~\\&|A|B|C|D|E||ADT^A01|1|P|2.5|||||FRA|UNICODE UTF-16").err(),
            Some(GuardError::UnsupportedCharset)
        ));
        assert!(matches!(
            check(b"MSH|^~}|A").err(),
            Some(GuardError::EncodingCharacters { .. })
        ));
        assert!(matches!(
            check(b"MSH|^~\\&|A\0").err(),
            Some(GuardError::ControlByte {
                byte: 0,
                offset: 10
            })
        ));
        let caps = Caps {
            max_fields_per_segment: 5,
            ..Caps::default()
        };
        let e = check_message(b"MSH|^~\\&|A\rPID|1|2|3|4|5|6", &caps, Charset::Utf8)
            .expect_err("refused");
        assert!(e.to_string().contains("max_fields_per_segment"), "{e}");
        assert!(matches!(
            check(b"MSH|^~\\&|A\rMSH|^~\\&|B").err(),
            Some(GuardError::SecondMessage { segment: 2 })
        ));
    }

    #[test]
    fn latin1_is_decoded_when_declared() {
        let raw =
            b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5|||||FRA|8859/1\rPID|1||||H\xe9l\xe8ne";
        let m = check(raw).expect("ok");
        assert!(m.text().ends_with("Hélène"));
        assert!(matches!(
            check(b"MSH|^~\\&|A\rPID|\xe9").err(),
            Some(GuardError::InvalidEncoding { offset: 15, .. })
        ));
    }

    #[test]
    fn batches_split_and_count() {
        let file = b"FHS|^~\\&\rBHS|^~\\&\rMSH|^~\\&|A\rPID|1\rMSH|^~\\&|B\rBTS|2\rFTS|1\r";
        let entries = split_batch(file, &Caps::default()).expect("split");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].raw, b"MSH|^~\\&|A\rPID|1");
        let bad = b"BHS|^~\\&\rMSH|^~\\&|A\rBTS|3\r";
        assert_eq!(
            split_batch(bad, &Caps::default()).err(),
            Some(GuardError::BatchCount {
                declared: 3,
                found: 1
            })
        );
        let comments = b"/*\n * hello\n */\nMSH|^~\\&|A\n\n// next\nMSH|^~\\&|B\n";
        assert_eq!(
            split_batch(comments, &Caps::default()).map(|e| e.len()),
            Ok(2)
        );
    }
}
