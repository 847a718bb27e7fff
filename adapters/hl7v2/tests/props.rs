//! Mutated real samples (byte flips, truncations, insertions, delimiter floods) never make
//! the intake, the batch splitter or the MLLP decoder panic or hang.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{data, intake, sample_files, within};
use parcours_hl7v2::mllp::MllpCodec;
use parcours_hl7v2::{Caps, Header, Outcome, split_batch};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, byte: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Flood { at: usize, byte: u8, count: usize },
    Duplicate { from: usize, len: usize, at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let delimiter = prop::sample::select(vec![
        b'|', b'^', b'~', b'&', b'\\', b'\r', b'\n', 0x0B, 0x1C,
    ]);
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), delimiter, 1usize..300_000)
            .prop_map(|(at, byte, count)| Mutation::Flood { at, byte, count }),
        (any::<usize>(), 1usize..4096, any::<usize>())
            .prop_map(|(from, len, at)| Mutation::Duplicate { from, len, at }),
    ]
}

fn apply(mut raw: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = raw.len().max(1);
        match m {
            Mutation::Flip { at, byte } => {
                if !raw.is_empty() {
                    let i = at % raw.len();
                    raw[i] ^= byte;
                }
            }
            Mutation::Truncate { at } => raw.truncate(at % n),
            Mutation::Insert { at, bytes } => {
                let i = at % n;
                let i = i.min(raw.len());
                raw.splice(i..i, bytes.iter().copied());
            }
            Mutation::Flood { at, byte, count } => {
                let i = (at % n).min(raw.len());
                raw.splice(i..i, std::iter::repeat_n(*byte, *count));
            }
            Mutation::Duplicate { from, len, at } => {
                if !raw.is_empty() {
                    let s = from % raw.len();
                    let e = (s + len).min(raw.len());
                    let chunk = raw[s..e].to_vec();
                    let i = (at % n).min(raw.len());
                    raw.splice(i..i, chunk);
                }
            }
        }
    }
    raw
}

fn samples() -> Vec<Vec<u8>> {
    sample_files()
        .iter()
        .map(|f| data(f))
        .filter(|d| !d.is_empty())
        .collect()
}

/// Everything the adapter does with untrusted bytes.
fn exercise(raw: Vec<u8>) -> usize {
    let intake = intake();
    let mut outcomes = 0;
    let p = intake.process(&raw);
    let ack = intake.ack_bytes(p.header.as_ref(), &p.ack());
    assert!(!ack.is_empty());
    if let Outcome::Refused(e) = &p.outcome {
        assert!(!e.to_string().is_empty());
    }
    outcomes += 1;
    if let Ok(entries) = split_batch(&raw, &Caps::default()) {
        for e in entries {
            let _ = intake.process(&e.raw);
            outcomes += 1;
        }
    }
    let _ = Header::sniff(&raw);
    let mut codec = MllpCodec::new(64 * 1024);
    let mut buf = BytesMut::from(&raw[..]);
    while let Ok(Some(_)) = codec.decode(&mut buf) {
        outcomes += 1;
    }
    let _ = codec.decode_eof(&mut buf);
    outcomes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn mutated_samples_never_panic_or_hang(
        pick in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let all = samples();
        let raw = apply(all[pick.index(all.len())].clone(), &mutations);
        let n = within(Duration::from_secs(20), move || exercise(raw));
        prop_assert!(n >= 1);
    }
}

#[test]
fn a_message_at_every_cap_is_still_fast() {
    // Just under the delimiter caps: parsing is bounded.
    let caps = Caps::default();
    let mut raw = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5".to_vec();
    let per_segment = caps.max_delimiters_per_segment - 10;
    let segments = caps.max_delimiters_per_message / per_segment;
    for _ in 0..segments {
        raw.extend(b"\rZZZ|");
        raw.extend(std::iter::repeat_n(b'^', per_segment - 1));
    }
    assert!(raw.len() < caps.max_message_bytes);
    let p = within(Duration::from_secs(20), move || intake().process(&raw));
    assert!(
        matches!(p.outcome, Outcome::Refused(_)),
        "no PID: refused after parsing"
    );
}
