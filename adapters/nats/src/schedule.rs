//! Which fetched messages of a partition may go to the engine now.
//!
//! A partition's consumer keeps fetching while earlier batches are being committed, and
//! hands the engine a new batch as soon as one can go: several batches of a partition
//! are in flight at once, so an event published while another is being committed does
//! not wait for that commit (and for the fetch after it) to begin its own.
//!
//! Each patient's events must still be decided in the order they were published. The
//! [`Schedule`] holds what was fetched and not yet handed over, in stream order, and
//! gives out only what cannot overtake anything:
//!
//! - a patient with a batch in flight ("busy") gets nothing more until that batch is
//!   answered (the engine decides each submission in order, but a batch that fails after
//!   its successor was handed over would be overtaken by it);
//! - a patient whose message was handed back to the server for a retry ("blocked") gets
//!   nothing more until that message is fetched again (JetStream delivers it again,
//!   before newer messages, to the pull request open or a later one); if it does not come
//!   back — a pull request sent after it ended with nothing delivered, or the partition
//!   was paused past the wait — the block is
//!   lifted, as a consumer without fetch-ahead would have done;
//! - within one batch a patient's events keep their order (one submission is decided in
//!   order), so a patient free at the start of a batch gives all its held events to it.
//!
//! An identity link (`identity.linked`, keyed by the national key) also changes the
//! local key's patient — its commit moves the local key's instances to the national
//! key — and so does a merge the retired key's: such a message counts for both keys
//! ([`Waiting::linked`]). It goes only when both are free, and both are busy while its
//! batch is in flight: an event published under the local key after the link waits for
//! the link's commit, then reads the link (the consumer's relink, or the engine's
//! follow-at-commit) and goes to the national key, never decided under the local key
//! in a batch racing the link's.
//!
//! Messages are never handed back to the server merely because they were fetched early:
//! a nak counts a delivery, and bounded retries ([`crate::ConsumerSettings::max_attempts`])
//! must count only the attempts a message really had.

use std::collections::{HashMap, HashSet};

/// A patient: tenant and pseudonymous subject.
pub(crate) type PatientKey = (String, String);

/// One fetched message waiting for its turn.
pub(crate) struct Waiting<T> {
    /// Stream sequence (its order of publication in the partition).
    pub(crate) sequence: u64,
    /// Its patient, when it decoded to an event (a message that did not is dead-lettered
    /// and may go at any time).
    pub(crate) patient: Option<PatientKey>,
    /// The other patient an identity link (merge) changes: its local (retired) key.
    pub(crate) linked: Option<PatientKey>,
    pub(crate) item: T,
}

impl<T> Waiting<T> {
    /// The patients the message changes: its own, and a link's local key.
    pub(crate) fn patients(&self) -> impl Iterator<Item = &PatientKey> {
        self.patient.iter().chain(self.linked.iter())
    }
}

/// The fetched messages of one partition, and which patients may not go yet.
pub(crate) struct Schedule<T> {
    /// Sorted by sequence.
    waiting: Vec<Waiting<T>>,
    busy: HashMap<PatientKey, usize>,
    /// Patient → the sequences of their messages handed back for a retry, not fetched
    /// again yet.
    blocked: HashMap<PatientKey, Vec<u64>>,
}

impl<T> Default for Schedule<T> {
    fn default() -> Self {
        Schedule {
            waiting: Vec::new(),
            busy: HashMap::new(),
            blocked: HashMap::new(),
        }
    }
}

impl<T> Schedule<T> {
    /// Messages waiting.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether a patient waits for a message handed back for a retry.
    pub(crate) fn has_blocked(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// Add what a pull request delivered. The messages handed back earlier, once all fetched
    /// again, lift their patient's block (they sort before the patient's newer messages).
    pub(crate) fn add(&mut self, fetched: impl IntoIterator<Item = Waiting<T>>) {
        for w in fetched {
            for p in w.patients() {
                if let Some(back) = self.blocked.get_mut(p) {
                    back.retain(|s| *s != w.sequence);
                    if back.is_empty() {
                        self.blocked.remove(p);
                    }
                }
            }
            // A redelivery may come after newer messages: keep stream order.
            let at = self.waiting.partition_point(|x| x.sequence <= w.sequence);
            self.waiting.insert(at, w);
        }
    }

    /// Lift every block: the messages handed back are not coming (soon).
    pub(crate) fn unblock_all(&mut self) {
        self.blocked.clear();
    }

    /// Up to `max` messages that may go now, in stream order; their patients become busy
    /// until [`Schedule::done`]. A message of two patients (a link) goes when both may:
    /// held, it holds both patients' later messages.
    pub(crate) fn take(&mut self, max: usize) -> Vec<Waiting<T>> {
        let mut taken = Vec::new();
        // Patients with a message in this batch, and with one kept back (a patient may
        // be both, by a link kept back: then its later messages are kept too).
        let mut joined: HashSet<PatientKey> = HashSet::new();
        let mut held: HashSet<PatientKey> = HashSet::new();
        let mut kept = Vec::with_capacity(self.waiting.len());
        for w in self.waiting.drain(..) {
            let free = taken.len() < max
                && w.patients().all(|p| {
                    !held.contains(p)
                        && (joined.contains(p)
                            || (!self.busy.contains_key(p) && !self.blocked.contains_key(p)))
                });
            if free {
                joined.extend(w.patients().cloned());
                taken.push(w);
            } else {
                held.extend(w.patients().cloned());
                kept.push(w);
            }
        }
        self.waiting = kept;
        for p in joined {
            *self.busy.entry(p).or_default() += 1;
        }
        taken
    }

    /// A batch was answered: its patients are free again, except those whose messages were
    /// handed back for a retry (`retried`: patient and sequence), blocked until they are
    /// fetched again.
    pub(crate) fn done<'a>(
        &mut self,
        patients: impl IntoIterator<Item = &'a PatientKey>,
        retried: impl IntoIterator<Item = (PatientKey, u64)>,
    ) {
        for p in patients {
            if let Some(n) = self.busy.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    self.busy.remove(p);
                }
            }
        }
        for (p, sequence) in retried {
            // Its redelivery may already be here (a fetch in flight got it first).
            if !self.waiting.iter().any(|w| w.sequence == sequence) {
                self.blocked.entry(p).or_default().push(sequence);
            }
        }
    }

    /// Every waiting message, for a progress ack or to give them back.
    pub(crate) fn items(&self) -> impl Iterator<Item = &T> {
        self.waiting.iter().map(|w| &w.item)
    }

    /// Take every waiting message out (to give them back when the loop ends).
    pub(crate) fn drain(&mut self) -> Vec<Waiting<T>> {
        self.busy.clear();
        self.blocked.clear();
        std::mem::take(&mut self.waiting)
    }
}

/// The distinct patients of a batch (a link's two).
pub(crate) fn patients_of<T>(batch: &[Waiting<T>]) -> HashSet<PatientKey> {
    batch.iter().flat_map(|w| w.patients().cloned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: u32) -> PatientKey {
        ("t".into(), format!("p{p}"))
    }

    fn msg(sequence: u64, p: u32) -> Waiting<()> {
        Waiting {
            sequence,
            patient: Some(key(p)),
            linked: None,
            item: (),
        }
    }

    /// The patient's number of a test message.
    fn number(w: &Waiting<()>) -> u32 {
        w.patient.as_ref().expect("keyed").1[1..]
            .parse()
            .expect("number")
    }

    fn seqs(v: &[Waiting<()>]) -> Vec<u64> {
        v.iter().map(|w| w.sequence).collect()
    }

    #[test]
    fn a_busy_patient_waits_while_others_go() {
        let mut s = Schedule::default();
        s.add([msg(1, 1), msg(2, 2)]);
        let first = s.take(10);
        assert_eq!(seqs(&first), [1, 2]);
        s.add([msg(3, 1), msg(4, 3), msg(5, 1), msg(6, 2)]);
        assert_eq!(seqs(&s.take(10)), [4], "patients 1 and 2 are in flight");
        s.done(&patients_of(&first), []);
        assert_eq!(seqs(&s.take(10)), [3, 5, 6], "in order, together once free");
    }

    #[test]
    fn a_patient_held_once_stays_held_for_the_rest_of_the_pass() {
        let mut s = Schedule::default();
        s.add([msg(1, 1)]);
        let first = s.take(10);
        s.add([msg(2, 1), msg(3, 2), msg(4, 1)]);
        assert_eq!(seqs(&s.take(10)), [3]);
        s.done(&patients_of(&first), []);
        assert_eq!(seqs(&s.take(1)), [2], "at most max");
        assert!(s.take(10).is_empty(), "2 is in flight: 4 waits");
    }

    #[test]
    fn a_retried_message_blocks_its_patient_until_fetched_again() {
        let mut s = Schedule::default();
        s.add([msg(10, 1), msg(11, 2)]);
        let first = s.take(10);
        // Newer messages fetched while the batch was in flight.
        s.add([msg(12, 1), msg(13, 2)]);
        s.done(&patients_of(&first), [(key(1), 10)]);
        assert_eq!(seqs(&s.take(10)), [13], "patient 1 waits for message 10");
        s.add([msg(14, 3)]);
        assert_eq!(seqs(&s.take(10)), [14]);
        s.add([msg(10, 1)]);
        assert!(!s.has_blocked());
        assert_eq!(seqs(&s.take(10)), [10, 12], "the redelivery first");
    }

    #[test]
    fn blocks_are_lifted_when_the_message_does_not_come_back() {
        let mut s = Schedule::default();
        s.add([msg(10, 1)]);
        let first = s.take(10);
        s.add([msg(12, 1)]);
        s.done(&patients_of(&first), [(key(1), 10)]);
        assert!(s.take(10).is_empty());
        s.unblock_all();
        assert_eq!(seqs(&s.take(10)), [12]);
    }

    #[test]
    fn undecodable_messages_go_at_any_time_and_stream_order_is_kept() {
        let mut s: Schedule<()> = Schedule::default();
        s.add([msg(5, 1)]);
        let first = s.take(10);
        s.add([
            msg(8, 1),
            Waiting {
                sequence: 7,
                patient: None,
                linked: None,
                item: (),
            },
            msg(6, 2),
        ]);
        assert_eq!(seqs(&s.take(10)), [6, 7]);
        assert_eq!(s.len(), 1);
        s.done(&patients_of(&first), []);
        assert_eq!(seqs(&s.take(10)), [8]);
    }

    /// A link (keyed by the national key) and its local key's messages.
    fn link(sequence: u64, national: u32, local: u32) -> Waiting<()> {
        Waiting {
            linked: Some(key(local)),
            ..msg(sequence, national)
        }
    }

    #[test]
    fn a_link_holds_its_local_keys_later_messages_until_answered() {
        let mut s = Schedule::default();
        // The national key's discharge, its link to local key 2, then a weight under
        // the local key published after the link.
        s.add([msg(1, 1)]);
        let first = s.take(10);
        s.add([link(2, 1, 2), msg(3, 2), msg(4, 3)]);
        assert_eq!(
            seqs(&s.take(10)),
            [4],
            "the link waits for its national key; the local key's weight for the link"
        );
        s.done(&patients_of(&first), []);
        let linking = s.take(1);
        assert_eq!(seqs(&linking), [2]);
        assert!(
            s.take(10).is_empty(),
            "the local key is busy while the link's batch is in flight"
        );
        s.done(&patients_of(&linking), []);
        assert_eq!(seqs(&s.take(10)), [3]);

        // Free at once, the link and the local key's later messages share a batch (the
        // consumer takes them to the national key in place).
        let mut s = Schedule::default();
        s.add([link(1, 1, 2), msg(2, 2), msg(3, 1)]);
        assert_eq!(seqs(&s.take(10)), [1, 2, 3]);

        // An earlier message of the local key in flight holds the link back, and with
        // it the national key's later messages.
        let mut s = Schedule::default();
        s.add([msg(1, 2)]);
        let first = s.take(10);
        s.add([link(2, 1, 2), msg(3, 1)]);
        assert!(s.take(10).is_empty());
        s.done(&patients_of(&first), []);
        assert_eq!(seqs(&s.take(10)), [2, 3]);

        // A link handed back for a retry blocks both keys until fetched again.
        let mut s = Schedule::default();
        s.add([link(1, 1, 2)]);
        let first = s.take(10);
        s.add([msg(2, 2), msg(3, 1)]);
        s.done(&patients_of(&first), [(key(1), 1), (key(2), 1)]);
        assert!(s.take(10).is_empty());
        s.add([link(1, 1, 2)]);
        assert_eq!(seqs(&s.take(10)), [1, 2, 3]);
    }

    /// Random interleavings of fetches, takes and answers (some with retries), some
    /// messages links of two patients: each patient's messages (a link's for both) are
    /// handed over in stream order, a patient never has two batches in flight, and
    /// everything fetched is handed over once.
    #[test]
    fn each_patients_messages_go_in_order_whatever_the_interleaving() {
        for seed in 0..300u64 {
            let mut rng = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut next = |n: u64| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (rng >> 33) % n
            };
            // (sequence, patient, linked patient)
            type Published = (u64, u32, Option<u32>);
            let waiting = |(q, p, l): Published| Waiting {
                linked: l.map(key),
                ..msg(q, p)
            };
            let mut s = Schedule::default();
            let mut published = 0usize;
            let mut server: Vec<Published> = Vec::new(); // published or handed back, not fetched
            let mut inflight: Vec<Vec<Waiting<()>>> = Vec::new();
            let mut handed: HashMap<PatientKey, Vec<u64>> = HashMap::new();
            let mut handed_count = 0usize;
            let mut seq = 0;
            for _ in 0..300 {
                match next(5) {
                    0 => {
                        for _ in 0..next(4) {
                            seq += 1;
                            let p = next(5) as u32;
                            let l = (next(5) == 0).then(|| (p + 1 + next(4) as u32) % 5);
                            published += 1;
                            server.push((seq, p, l));
                        }
                    }
                    1 => {
                        // A fetch: redeliveries first, in sequence order, then the rest.
                        server.sort();
                        let n = next(4) as usize;
                        let got: Vec<Published> = server.drain(..n.min(server.len())).collect();
                        s.add(got.into_iter().map(waiting));
                    }
                    2 if inflight.len() < 3 => {
                        let batch = s.take(1 + next(3) as usize);
                        if !batch.is_empty() {
                            let mut busy = HashSet::new();
                            for b in &inflight {
                                busy.extend(patients_of(b));
                            }
                            for w in &batch {
                                for p in w.patients() {
                                    assert!(!busy.contains(p), "seed {seed}: two batches of {p:?}");
                                }
                            }
                            inflight.push(batch);
                        }
                    }
                    _ if !inflight.is_empty() => {
                        let batch = inflight.remove(next(inflight.len() as u64) as usize);
                        // Maybe a retry of the batch's earliest message and every later
                        // one sharing a patient with a message retried.
                        let mut retried = Vec::new();
                        let mut back = Vec::new();
                        let mut failed: HashSet<PatientKey> = HashSet::new();
                        if next(3) == 0 {
                            failed.extend(batch[0].patients().cloned());
                        }
                        for w in &batch {
                            if w.patients().any(|p| failed.contains(p)) {
                                failed.extend(w.patients().cloned());
                                for p in w.patients() {
                                    retried.push((p.clone(), w.sequence));
                                }
                                back.push((
                                    w.sequence,
                                    number(w),
                                    w.linked.as_ref().map(|l| l.1[1..].parse().expect("number")),
                                ));
                            } else {
                                handed_count += 1;
                                for p in w.patients() {
                                    handed.entry(p.clone()).or_default().push(w.sequence);
                                }
                            }
                        }
                        if !back.is_empty() && next(2) == 0 {
                            // The redelivery reaches a fetch in flight before the answer.
                            s.add(back.into_iter().map(waiting));
                        } else {
                            server.extend(back);
                        }
                        s.done(&patients_of(&batch), retried);
                    }
                    _ => {}
                }
            }
            // Then no more failures: everything is handed over, nothing stays blocked.
            server.sort();
            s.add(server.drain(..).map(waiting));
            let mut answer = |s: &mut Schedule<()>, b: Vec<Waiting<()>>| {
                for w in &b {
                    handed_count += 1;
                    for p in w.patients() {
                        handed.entry(p.clone()).or_default().push(w.sequence);
                    }
                }
                s.done(&patients_of(&b), []);
            };
            for b in std::mem::take(&mut inflight) {
                answer(&mut s, b);
            }
            loop {
                let b = s.take(usize::MAX);
                if b.is_empty() {
                    break;
                }
                answer(&mut s, b);
            }
            assert_eq!(s.len(), 0, "seed {seed}: messages left blocked");
            assert_eq!(handed_count, published, "seed {seed}");
            for (p, seqs) in &handed {
                let mut sorted = seqs.clone();
                sorted.sort();
                assert_eq!(&sorted, seqs, "seed {seed}: patient {p:?} out of order");
            }
        }
    }
}
