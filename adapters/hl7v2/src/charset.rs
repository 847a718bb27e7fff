//! Character sets a message may declare in MSH-18 (HL7 table 0211), decoded safely.

use std::fmt;

/// A character set parcours can decode: the ones French hospital systems actually send.
///
/// | MSH-18 value (case-insensitive)                          | decoded as                      |
/// |----------------------------------------------------------|---------------------------------|
/// | empty                                                    | [`IntakeConfig::default_charset`](crate::IntakeConfig::default_charset) (UTF-8 unless configured) |
/// | `ASCII`                                                  | US-ASCII (valid UTF-8 is tolerated) |
/// | `UNICODE UTF-8`, `UTF-8`, `UTF8`                         | UTF-8                           |
/// | `UNICODE` (table 0211 before 2.5: ISO/IEC 10646, no encoding named) | UTF-8 (see below)   |
/// | `8859/1`, `ISO-8859-1`, `ISO8859-1`, `ISO_8859-1`, `LATIN1` | ISO-8859-1 (Latin-1), bytes 0x80–0x9F read as Windows-1252 |
/// | `8859/15`, `ISO-8859-15`, `ISO8859-15`, `LATIN9`         | ISO-8859-15 (Latin-9, with €)   |
/// | `CP1252`, `WINDOWS-1252`, `WIN1252`, `CP-1252` (not in table 0211; Windows systems send it) | Windows-1252 |
///
/// Anything else (`UNICODE UTF-16`, `ISO IR87` …) is refused before parsing.
///
/// A bare `UNICODE` (lab analysers such as Mindray's write it) names the repertoire, not
/// its encoding. A message whose MSH-18 could be read byte by byte at all is in an
/// ASCII-compatible encoding, not UCS-2 or UTF-16 (where every other byte of `MSH|` would
/// be zero): of those, the one that encodes all of ISO/IEC 10646 is UTF-8. It is decoded
/// as UTF-8, strictly — bytes that are not UTF-8 refuse the message, as under
/// `UNICODE UTF-8`.
///
/// A message labelled ISO-8859-1 whose bytes 0x80–0x9F are Windows-1252 characters (`œ`
/// as 0x9C, `€` as 0x80, typographic quotes: what a Windows application writes when it says
/// Latin-1) is read as web browsers read it (the WHATWG Encoding Standard's
/// `windows-1252` for the `iso-8859-1` label): in ISO-8859-1 those bytes are C1 control
/// codes, which no message means; "cœur" stays "cœur". The five bytes Windows-1252 leaves
/// undefined stay the C1 code points, as there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Charset {
    /// US-ASCII.
    Ascii,
    /// UTF-8 (the default).
    #[default]
    Utf8,
    /// ISO-8859-1.
    Latin1,
    /// ISO-8859-15.
    Latin9,
    /// Windows-1252 (a superset of ISO-8859-1's printable characters).
    Windows1252,
}

/// Where decoding failed: the byte offset only (the bytes themselves are patient data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DecodeError {
    pub(crate) offset: usize,
}

impl Charset {
    /// The charset an MSH-18 value names, if parcours supports it.
    pub fn from_msh18(value: &str) -> Option<Charset> {
        let v = value.trim().to_ascii_uppercase();
        match v.as_str() {
            "ASCII" | "US-ASCII" => Some(Charset::Ascii),
            "UNICODE UTF-8" | "UTF-8" | "UTF8" | "UNICODE" => Some(Charset::Utf8),
            "8859/1" | "ISO-8859-1" | "ISO8859-1" | "ISO_8859-1" | "LATIN1" => {
                Some(Charset::Latin1)
            }
            "8859/15" | "ISO-8859-15" | "ISO8859-15" | "ISO_8859-15" | "LATIN9" => {
                Some(Charset::Latin9)
            }
            "CP1252" | "CP-1252" | "WINDOWS-1252" | "WIN1252" => Some(Charset::Windows1252),
            _ => None,
        }
    }

    /// The HL7 table 0211 name.
    pub fn hl7_name(self) -> &'static str {
        match self {
            Charset::Ascii => "ASCII",
            Charset::Utf8 => "UNICODE UTF-8",
            Charset::Latin1 => "8859/1",
            Charset::Latin9 => "8859/15",
            // Not in table 0211: the name Windows systems write.
            Charset::Windows1252 => "CP1252",
        }
    }

    /// Decode bytes to text.
    pub(crate) fn decode(self, bytes: &[u8]) -> Result<String, DecodeError> {
        match self {
            Charset::Ascii | Charset::Utf8 => match std::str::from_utf8(bytes) {
                Ok(s) => Ok(s.to_owned()),
                Err(e) => Err(DecodeError {
                    offset: e.valid_up_to(),
                }),
            },
            Charset::Latin1 | Charset::Windows1252 => {
                Ok(bytes.iter().map(|&b| windows1252_char(b)).collect())
            }
            Charset::Latin9 => Ok(bytes.iter().map(|&b| latin9_char(b)).collect()),
        }
    }

    /// Decode bytes that came out of a `\X..\` escape: never fails (invalid UTF-8 is
    /// replaced, as the value is data, not structure).
    pub(crate) fn decode_lossy(self, bytes: &[u8]) -> String {
        match self {
            Charset::Ascii | Charset::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
            Charset::Latin1 | Charset::Windows1252 => {
                bytes.iter().map(|&b| windows1252_char(b)).collect()
            }
            Charset::Latin9 => bytes.iter().map(|&b| latin9_char(b)).collect(),
        }
    }

    /// Encode text for the wire; characters the charset cannot hold become `?`.
    pub fn encode(self, text: &str) -> Vec<u8> {
        match self {
            Charset::Utf8 => text.as_bytes().to_vec(),
            Charset::Ascii => text
                .chars()
                .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
                .collect(),
            Charset::Latin1 => text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                .collect(),
            Charset::Latin9 => text.chars().map(latin9_byte).collect(),
            Charset::Windows1252 => text.chars().map(windows1252_byte).collect(),
        }
    }
}

impl fmt::Display for Charset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hl7_name())
    }
}

/// The eight code points where ISO-8859-15 differs from ISO-8859-1.
const LATIN9_DIFF: [(u8, char); 8] = [
    (0xA4, '€'),
    (0xA6, 'Š'),
    (0xA8, 'š'),
    (0xB4, 'Ž'),
    (0xB8, 'ž'),
    (0xBC, 'Œ'),
    (0xBD, 'œ'),
    (0xBE, 'Ÿ'),
];

/// Windows-1252's characters at bytes 0x80–0x9F (`None`: undefined there).
const WINDOWS1252_HIGH: [Option<char>; 32] = [
    Some('€'),
    None,
    Some('‚'),
    Some('ƒ'),
    Some('„'),
    Some('…'),
    Some('†'),
    Some('‡'),
    Some('ˆ'),
    Some('‰'),
    Some('Š'),
    Some('‹'),
    Some('Œ'),
    None,
    Some('Ž'),
    None,
    None,
    Some('\u{2018}'),
    Some('\u{2019}'),
    Some('\u{201C}'),
    Some('\u{201D}'),
    Some('•'),
    Some('–'),
    Some('—'),
    Some('˜'),
    Some('™'),
    Some('š'),
    Some('›'),
    Some('œ'),
    None,
    Some('ž'),
    Some('Ÿ'),
];

/// A Windows-1252 byte's character; an undefined byte is its C1 code point.
fn windows1252_char(b: u8) -> char {
    match b {
        0x80..=0x9F => WINDOWS1252_HIGH[usize::from(b - 0x80)].unwrap_or(char::from(b)),
        _ => char::from(b),
    }
}

fn windows1252_byte(c: char) -> u8 {
    if let Some(i) = WINDOWS1252_HIGH.iter().position(|x| *x == Some(c)) {
        // `i` < 32: the table's length.
        return 0x80 + u8::try_from(i).unwrap_or(0);
    }
    match u8::try_from(u32::from(c)) {
        // C1 code points Windows-1252 defines as other characters cannot be encoded.
        Ok(b) if (0x80..=0x9F).contains(&b) && windows1252_char(b) != c => b'?',
        Ok(b) => b,
        Err(_) => b'?',
    }
}

fn latin9_char(b: u8) -> char {
    LATIN9_DIFF
        .iter()
        .find(|(byte, _)| *byte == b)
        .map_or(char::from(b), |(_, c)| *c)
}

fn latin9_byte(c: char) -> u8 {
    if let Some((b, _)) = LATIN9_DIFF.iter().find(|(_, ch)| *ch == c) {
        return *b;
    }
    match u8::try_from(u32::from(c)) {
        // The Latin-1 code points replaced in Latin-9 cannot be encoded.
        Ok(b) if LATIN9_DIFF.iter().any(|(byte, _)| *byte == b) => b'?',
        Ok(b) => b,
        Err(_) => b'?',
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_round_trips() {
        assert_eq!(Charset::from_msh18("8859/1"), Some(Charset::Latin1));
        assert_eq!(Charset::from_msh18(" unicode utf-8 "), Some(Charset::Utf8));
        assert_eq!(Charset::from_msh18("Unicode"), Some(Charset::Utf8));
        assert_eq!(Charset::from_msh18("UNICODE UTF-16"), None);
        let text = "Hélène Œuvre 5 €";
        for cs in [Charset::Utf8, Charset::Latin9] {
            assert_eq!(cs.decode(&cs.encode(text)).ok().as_deref(), Some(text));
        }
        assert_eq!(Charset::Latin1.encode("€"), b"?");
        assert_eq!(
            Charset::Utf8.decode(b"ab\xff").err(),
            Some(DecodeError { offset: 2 })
        );
    }

    #[test]
    fn windows_1252_and_latin1_labelled_windows_text() {
        for name in ["CP1252", "windows-1252", "WIN1252", "cp-1252"] {
            assert_eq!(
                Charset::from_msh18(name),
                Some(Charset::Windows1252),
                "{name}"
            );
        }
        // "Cœur, 5 € — « bien »" as a Windows application writes it.
        let bytes = b"C\x9cur, 5 \x80 \x97 \xabbien\xbb \x93ok\x94";
        let text = "Cœur, 5 € — «bien» \u{201C}ok\u{201D}";
        assert_eq!(
            Charset::Windows1252.decode(bytes).ok().as_deref(),
            Some(text)
        );
        assert_eq!(Charset::Windows1252.encode(text), bytes);
        // Labelled Latin-1, the same bytes read the same (as browsers read them).
        assert_eq!(Charset::Latin1.decode(bytes).ok().as_deref(), Some(text));
        assert_eq!(Charset::Latin1.decode_lossy(b"\x9c"), "œ");
        // The five undefined bytes stay C1 code points, both ways.
        for b in [0x81u8, 0x8D, 0x8F, 0x90, 0x9D] {
            let c = char::from(b);
            assert_eq!(Charset::Windows1252.decode(&[b]).ok(), Some(c.to_string()));
            assert_eq!(Charset::Windows1252.encode(&c.to_string()), [b]);
        }
        // A C1 code point Windows-1252 uses for another character cannot be written.
        assert_eq!(Charset::Windows1252.encode("\u{9c}"), b"?");
        assert_eq!(Charset::Windows1252.encode("ĉ"), b"?");
    }
}
