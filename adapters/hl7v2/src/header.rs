//! The message header (MSH) fields the intake and the acknowledgement need.

use crate::charset::Charset;
use crate::guard::Separators;
use crate::message::Message;

/// MSH fields as sent. Values are raw (escape sequences kept), so they can be echoed
/// into the acknowledgement unchanged. Holds no patient data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// MSH-1 and MSH-2.
    pub separators: Separators,
    /// MSH-3.
    pub sending_application: String,
    /// MSH-4.
    pub sending_facility: String,
    /// MSH-5.
    pub receiving_application: String,
    /// MSH-6.
    pub receiving_facility: String,
    /// MSH-7.
    pub timestamp: String,
    /// MSH-9.1 (`ADT`).
    pub message_code: String,
    /// MSH-9.2 (`A01`).
    pub trigger: String,
    /// MSH-10, the message control id.
    pub control_id: String,
    /// MSH-11.
    pub processing_id: String,
    /// MSH-12 (`2.5^FRA^2.11`).
    pub version: String,
    /// MSH-18.
    pub charset: String,
}

impl Header {
    /// The header of a parsed message.
    pub fn from_message(msg: &Message) -> Header {
        let msh = msg.msh();
        let raw = |n| msh.field(n).raw().to_owned();
        let comp = |n, c| msh.field(n).comp(c).value().unwrap_or_default();
        Header {
            separators: *msg.separators(),
            sending_application: raw(3),
            sending_facility: raw(4),
            receiving_application: raw(5),
            receiving_facility: raw(6),
            timestamp: raw(7),
            message_code: comp(9, 1),
            trigger: comp(9, 2),
            control_id: raw(10),
            processing_id: raw(11),
            version: raw(12),
            charset: raw(18),
        }
    }

    /// A best-effort header read from bytes the guard or the parser refused, so the
    /// negative acknowledgement can still name the control id. `None` when the first
    /// line is not a readable MSH.
    pub fn sniff(raw: &[u8]) -> Option<Header> {
        let raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
        let start = raw.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
        let raw = &raw[start..];
        let end = raw
            .iter()
            .take(4096)
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(raw.len().min(4096));
        let line = &raw[..end];
        if !line.starts_with(b"MSH") {
            return None;
        }
        let field = *line.get(3)?;
        let enc: Vec<u8> = line
            .get(4..)?
            .iter()
            .take_while(|&&b| b != field)
            .copied()
            .collect();
        let ok = |b: u8| b.is_ascii_graphic() && !b.is_ascii_alphanumeric();
        if !ok(field) || enc.len() < 4 || enc.len() > 5 || !enc.iter().all(|&b| ok(b)) {
            return None;
        }
        let mut all = enc.clone();
        all.push(field);
        all.sort_unstable();
        if all.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }
        let separators = Separators {
            field: char::from(field),
            component: char::from(enc[0]),
            repetition: char::from(enc[1]),
            escape: char::from(enc[2]),
            subcomponent: char::from(enc[3]),
            truncation: enc.get(4).map(|&b| char::from(b)),
        };
        let parts: Vec<&[u8]> = line.split(|&b| b == field).collect();
        // parts[k] is MSH-(k+1) for k >= 1.
        let get = |n: usize| -> String {
            parts
                .get(n - 1)
                .map(|p| {
                    String::from_utf8_lossy(p)
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(199)
                        .collect()
                })
                .unwrap_or_default()
        };
        let comp = |s: &str, i: usize| -> String {
            s.split(separators.component)
                .nth(i)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let msg_type = get(9);
        Some(Header {
            separators,
            sending_application: get(3),
            sending_facility: get(4),
            receiving_application: get(5),
            receiving_facility: get(6),
            timestamp: get(7),
            message_code: comp(&msg_type, 0),
            trigger: comp(&msg_type, 1),
            control_id: get(10),
            processing_id: get(11),
            version: get(12),
            charset: get(18),
        })
    }

    /// MSH-9 as `ADT^A01` when it has the shape of a message type, else `None` (see
    /// [`crate::error::message_type_name`]): what logs and dead letters name.
    pub fn message_type_name(&self) -> Option<String> {
        crate::error::message_type_name(&self.message_code, &self.trigger)
    }

    /// MSH-12.1, the version id (`2.5`).
    pub fn version_id(&self) -> &str {
        self.version
            .split(self.separators.component)
            .next()
            .unwrap_or_default()
            .trim()
    }

    /// `(major, minor, patch)` of the version id, if it reads as one.
    pub fn version_number(&self) -> Option<(u8, u8, u8)> {
        let mut it = self.version_id().split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        let patch = match it.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if it.next().is_some() {
            return None;
        }
        Some((major, minor, patch))
    }

    /// Whether MSH-12 declares the French national extension (`2.5^FRA^2.11`).
    pub fn is_french_extension(&self) -> bool {
        self.version
            .split(self.separators.component)
            .nth(1)
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("FRA"))
    }

    /// The character set MSH-18 names, if supported.
    pub fn charset(&self) -> Option<Charset> {
        let first = self
            .charset
            .split([self.separators.repetition, self.separators.component])
            .next()
            .unwrap_or_default();
        if first.trim().is_empty() {
            None
        } else {
            Charset::from_msh18(first)
        }
    }

    /// The first component of an HD (application or facility), escape-decoded poorly
    /// but safely for use in a `source` string: namespace id, else universal id.
    pub(crate) fn hd_name(raw: &str, seps: &Separators) -> String {
        let mut parts = raw.split(seps.component);
        let ns = parts.next().unwrap_or_default().trim();
        let uid = parts.next().unwrap_or_default().trim();
        let pick = if ns.is_empty() { uid } else { ns };
        pick.chars()
            .filter(|c| !c.is_control() && *c != seps.escape)
            .collect()
    }
}
