//! MLLP framing: `0x0B` payload `0x1C 0x0D`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Start block.
pub const SB: u8 = 0x0B;
/// End block.
pub const EB: u8 = 0x1C;
/// Carriage return after the end block.
pub const CR: u8 = 0x0D;

/// What the decoder yields.
#[derive(Clone, PartialEq, Eq)]
pub enum MllpFrame {
    /// A start block was read and the frame's end has not arrived yet (yielded once per
    /// frame, before its [`Message`](MllpFrame::Message) or
    /// [`Oversized`](MllpFrame::Oversized)): the server times the frame from here.
    Started,
    /// A complete frame's payload.
    Message(BytesMut),
    /// A frame longer than the limit, read to its end block without keeping more than
    /// the limit: its first `max_frame` bytes (for the dead letter, and MSH-10 for the
    /// NAK) and its size. Yielded once the end block arrives (`complete`), or when the
    /// frame is abandoned (a start block, the end of the stream, or
    /// [`MllpCodec::take_oversized`] when the server stops waiting for it). The decoder
    /// reads nothing after it: the connection is to be closed.
    Oversized {
        /// The frame's first `max_frame` bytes.
        head: Bytes,
        /// The frame's size (its payload, without the block characters) when
        /// `complete`; else how many bytes of it had arrived.
        received: usize,
        /// Whether the frame's end block arrived.
        complete: bool,
    },
}

impl std::fmt::Debug for MllpFrame {
    /// Never shows the payload.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MllpFrame::Started => f.write_str("Started"),
            MllpFrame::Message(b) => f.debug_tuple("Message").field(&b.len()).finish(),
            MllpFrame::Oversized {
                head,
                received,
                complete,
            } => f
                .debug_struct("Oversized")
                .field("head", &head.len())
                .field("received", received)
                .field("complete", complete)
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
///
/// A frame over the limit is not given up at the limit: its first `max_frame` bytes are
/// kept and the rest is read and dropped (counted, never buffered) up to its end block,
/// so the sender has finished writing when the negative acknowledgement comes, and the
/// refusal can say how large the frame was.
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
    /// A frame over the limit being read to its end: its first `max_frame` bytes and
    /// how many bytes of it have arrived.
    oversized: Option<(Bytes, usize)>,
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
            oversized: None,
        }
    }

    /// Bytes skipped so far because they were outside any frame (or in an abandoned one).
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    /// The frame over the limit being read to its end, given up now (the server stops
    /// waiting for it: frame timeout, shutdown, a failed read): its
    /// [`MllpFrame::Oversized`], not `complete`. `None` when no such frame is in progress.
    pub fn take_oversized(&mut self) -> Option<MllpFrame> {
        let (head, received) = self.oversized.take()?;
        self.failed = true;
        Some(MllpFrame::Oversized {
            head,
            received,
            complete: false,
        })
    }

    /// The frame over the limit ends (`complete`) or is abandoned.
    fn end_oversized(&mut self, complete: bool) -> Option<MllpFrame> {
        let (head, received) = self.oversized.take()?;
        self.failed = true;
        self.in_frame = false;
        Some(MllpFrame::Oversized {
            head,
            received,
            complete,
        })
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
            if let Some((_, received)) = &mut self.oversized {
                // Read and drop up to the end block; a start block abandons the frame.
                return Ok(match src.iter().position(|&b| b == EB || b == SB) {
                    Some(i) => {
                        *received += i;
                        let complete = src[i] == EB;
                        src.clear();
                        self.end_oversized(complete)
                    }
                    None => {
                        *received += src.len();
                        src.clear();
                        None
                    }
                });
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
                Some(i) => {
                    // The whole frame is here, and too large.
                    let head = src.split_to(self.max_frame).freeze();
                    src.clear();
                    self.oversized = Some((head, i));
                    return Ok(self.end_oversized(true));
                }
                None => {
                    self.scanned = src.len();
                    if src.len() > self.max_frame {
                        // Keep the first `max_frame` bytes; drop the rest as it comes.
                        let received = src.len();
                        let head = src.split_to(self.max_frame).freeze();
                        src.clear();
                        self.scanned = 0;
                        self.oversized = Some((head, received));
                        if !self.started {
                            self.started = true;
                            return Ok(Some(MllpFrame::Started));
                        }
                        return Ok(None);
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
            None if self.oversized.is_some() => Ok(self.end_oversized(false)),
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

    fn oversized(head: &[u8], received: usize, complete: bool) -> MllpFrame {
        MllpFrame::Oversized {
            head: Bytes::copy_from_slice(head),
            received,
            complete,
        }
    }

    #[test]
    fn oversized_frames_stop_the_decoder() {
        let mut c = MllpCodec::new(4);
        let out = frames(&mut c, b"\x0bMSH|too long\x1c\x0d\x0bA\x1c\x0d");
        assert_eq!(out, vec![oversized(b"MSH|", 12, true)]);
    }

    #[test]
    fn an_oversized_frame_keeps_its_first_max_frame_bytes_and_is_read_to_its_end() {
        let mut c = MllpCodec::new(8);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut payload = b"MSH|^~\\&|".to_vec();
        payload.extend(std::iter::repeat_n(b'x', 100));
        let mut input = vec![SB];
        input.extend(&payload);
        input.extend([EB, CR, SB]);
        input.extend(b"next");
        input.extend([EB, CR]);
        for chunk in input.chunks(5) {
            buf.put_slice(chunk);
            while let Ok(Some(f)) = c.decode(&mut buf) {
                got.push(f);
            }
            assert!(buf.len() <= 16, "what is over the limit is not buffered");
        }
        assert_eq!(
            got,
            vec![
                MllpFrame::Started,
                oversized(&payload[..8], payload.len(), true)
            ],
            "announced once, then refused with its size; nothing read after it"
        );
    }

    #[test]
    fn an_oversized_frame_given_up_before_its_end() {
        // The stream ends.
        let mut c = MllpCodec::new(4);
        let mut buf = BytesMut::from(&b"\x0bMSH|abcdefgh"[..]);
        assert_eq!(c.decode(&mut buf).ok().flatten(), Some(MllpFrame::Started));
        assert_eq!(c.decode(&mut buf).ok().flatten(), None);
        assert_eq!(
            c.decode_eof(&mut buf).ok().flatten(),
            Some(oversized(b"MSH|", 12, false))
        );
        // A start block inside it, once it is over the limit.
        let mut c = MllpCodec::new(4);
        let mut buf = BytesMut::from(&b"\x0bMSH|abcdef"[..]);
        assert_eq!(c.decode(&mut buf).ok().flatten(), Some(MllpFrame::Started));
        buf.put_slice(b"gh\x0bA\x1c\x0d");
        assert_eq!(
            c.decode(&mut buf).ok().flatten(),
            Some(oversized(b"MSH|", 12, false))
        );
        assert_eq!(c.decode(&mut buf).ok().flatten(), None, "nothing after it");
        // The server stops waiting (frame timeout).
        let mut c = MllpCodec::new(4);
        let mut buf = BytesMut::from(&b"\x0bMSH|abcdef"[..]);
        while let Ok(Some(_)) = c.decode(&mut buf) {}
        assert_eq!(c.take_oversized(), Some(oversized(b"MSH|", 10, false)));
        assert_eq!(c.take_oversized(), None);
    }
}
