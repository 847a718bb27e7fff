//! MLLP framing: `0x0B` payload `0x1C 0x0D`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Start block.
pub const SB: u8 = 0x0B;
/// End block.
pub const EB: u8 = 0x1C;
/// Carriage return after the end block.
pub const CR: u8 = 0x0D;

/// How much of an oversized frame is kept to read its MSH for the negative ACK.
const HEAD_KEPT: usize = 4096;

/// What the decoder yields.
#[derive(Clone, PartialEq, Eq)]
pub enum MllpFrame {
    /// A start block was read and the frame's end has not arrived yet (yielded once per
    /// frame, before its [`Message`](MllpFrame::Message) or
    /// [`Oversized`](MllpFrame::Oversized)): the server times the frame from here.
    Started,
    /// A complete frame's payload.
    Message(BytesMut),
    /// A frame longer than the limit: its first bytes (to read MSH-10 for the NAK) and how
    /// many bytes had arrived when it was given up. The decoder reads nothing after it:
    /// the connection is to be closed.
    Oversized {
        /// The first bytes of the frame.
        head: Bytes,
        /// Bytes received so far.
        received: usize,
    },
}

impl std::fmt::Debug for MllpFrame {
    /// Never shows the payload.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MllpFrame::Started => f.write_str("Started"),
            MllpFrame::Message(b) => f.debug_tuple("Message").field(&b.len()).finish(),
            MllpFrame::Oversized { received, .. } => f
                .debug_struct("Oversized")
                .field("received", received)
                .finish(),
        }
    }
}

/// A `tokio_util` codec for MLLP with a maximum frame size and resynchronisation: bytes
/// outside a frame are skipped up to the next start block and counted
/// ([`MllpCodec::skipped_bytes`]); a start block inside a frame abandons the partial
/// frame (counted too) and starts a new one. The end block may come without its CR.
/// [`MllpFrame::Started`] comes before each frame whose end is not in the bytes read so
/// far (a frame read whole in one go has none).
#[derive(Debug)]
pub struct MllpCodec {
    max_frame: usize,
    in_frame: bool,
    /// After an end block: a CR may follow and belongs to the trailer.
    after_end: bool,
    scanned: usize,
    skipped: u64,
    failed: bool,
    /// `Started` was yielded for the frame in progress.
    started: bool,
}

impl MllpCodec {
    /// A codec refusing frames larger than `max_frame` bytes.
    pub fn new(max_frame: usize) -> MllpCodec {
        MllpCodec {
            max_frame,
            in_frame: false,
            after_end: false,
            scanned: 0,
            skipped: 0,
            failed: false,
            started: false,
        }
    }

    /// Bytes skipped so far because they were outside any frame (or in an abandoned one).
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }
}

impl Decoder for MllpCodec {
    type Item = MllpFrame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<MllpFrame>, std::io::Error> {
        loop {
            if self.failed {
                src.clear();
                return Ok(None);
            }
            if !self.in_frame {
                if self.after_end {
                    let Some(&first) = src.first() else {
                        return Ok(None);
                    };
                    if first == CR {
                        src.advance(1);
                    }
                    self.after_end = false;
                }
                match src.iter().position(|&b| b == SB) {
                    Some(i) => {
                        self.skipped += i as u64;
                        src.advance(i + 1);
                        self.in_frame = true;
                        self.started = false;
                        self.scanned = 0;
                    }
                    None => {
                        self.skipped += src.len() as u64;
                        src.clear();
                        return Ok(None);
                    }
                }
            }
            let found = src[self.scanned..]
                .iter()
                .position(|&b| b == EB || b == SB)
                .map(|i| i + self.scanned);
            match found {
                Some(i) if src[i] == SB => {
                    // A new start block before the end: the partial frame is abandoned.
                    self.skipped += (i + 1) as u64;
                    src.advance(i + 1);
                    self.scanned = 0;
                }
                Some(i) if i <= self.max_frame => {
                    let payload = src.split_to(i);
                    src.advance(1);
                    self.in_frame = false;
                    self.after_end = true;
                    self.scanned = 0;
                    return Ok(Some(MllpFrame::Message(payload)));
                }
                _ => {
                    self.scanned = src.len();
                    if src.len() > self.max_frame {
                        let head = Bytes::copy_from_slice(&src[..src.len().min(HEAD_KEPT)]);
                        let received = src.len();
                        src.clear();
                        self.failed = true;
                        return Ok(Some(MllpFrame::Oversized { head, received }));
                    }
                    if !self.started {
                        self.started = true;
                        return Ok(Some(MllpFrame::Started));
                    }
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<MllpFrame>, std::io::Error> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None => {
                // A partial frame at end of stream is dropped: no ACK was owed for it.
                self.skipped += buf.len() as u64;
                buf.clear();
                Ok(None)
            }
        }
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for MllpCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        let payload = item.as_ref();
        dst.reserve(payload.len() + 3);
        dst.put_u8(SB);
        dst.put_slice(payload);
        dst.put_u8(EB);
        dst.put_u8(CR);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(codec: &mut MllpCodec, input: &[u8]) -> Vec<MllpFrame> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Ok(Some(f)) = codec.decode(&mut buf) {
            if f != MllpFrame::Started {
                out.push(f);
            }
        }
        out
    }

    fn msg(s: &[u8]) -> MllpFrame {
        MllpFrame::Message(BytesMut::from(s))
    }

    #[test]
    fn frames_garbage_and_restarts() {
        let mut c = MllpCodec::new(100);
        let out = frames(
            &mut c,
            b"junk\x0bA\x1c\x0d\x0bB\x1c\x0dxx\x0bpartial\x0bC\x1c",
        );
        assert_eq!(out, vec![msg(b"A"), msg(b"B"), msg(b"C")]);
        assert_eq!(c.skipped_bytes(), 4 + 2 + 8);
    }

    #[test]
    fn split_input_is_reassembled() {
        let mut c = MllpCodec::new(100);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in b"\x0bMSH|x\x1c\x0d" {
            buf.put_u8(*b);
            while let Ok(Some(f)) = c.decode(&mut buf) {
                got.push(f);
            }
        }
        assert_eq!(
            got,
            vec![MllpFrame::Started, msg(b"MSH|x")],
            "a frame read in parts is announced once"
        );
        assert_eq!(c.skipped_bytes(), 0);
    }

    #[test]
    fn oversized_frames_stop_the_decoder() {
        let mut c = MllpCodec::new(4);
        let out = frames(&mut c, b"\x0bMSH|too long\x1c\x0d\x0bA\x1c\x0d");
        assert!(matches!(out.as_slice(), [MllpFrame::Oversized { .. }]));
    }
}
