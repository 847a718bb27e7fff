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
//!   before newer messages, at a later fetch); if it does not come back — a fetch found
//!   the partition empty, or the partition was paused past the wait — the block is
//!   lifted, as a consumer without fetch-ahead would have done;
//! - within one batch a patient's events keep their order (one submission is decided in
//!   order), so a patient free at the start of a batch gives all its held events to it.
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
    pub(crate) item: T,
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

    /// Add what a fetch returned. The messages handed back earlier, once all fetched
    /// again, lift their patient's block (they sort before the patient's newer messages).
    pub(crate) fn add(&mut self, fetched: impl IntoIterator<Item = Waiting<T>>) {
        for w in fetched {
            if let Some(p) = &w.patient
                && let Some(back) = self.blocked.get_mut(p)
            {
                back.retain(|s| *s != w.sequence);
                if back.is_empty() {
                    self.blocked.remove(p);
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
    /// until [`Schedule::done`].
    pub(crate) fn take(&mut self, max: usize) -> Vec<Waiting<T>> {
        let mut taken = Vec::new();
        let mut joined: HashSet<PatientKey> = HashSet::new();
        let mut held: HashSet<PatientKey> = HashSet::new();
        let mut kept = Vec::with_capacity(self.waiting.len());
        for w in self.waiting.drain(..) {
            let free = match &w.patient {
                _ if taken.len() >= max => false,
                None => true,
                Some(p) if joined.contains(p) => true,
                Some(p) => {
                    !held.contains(p) && !self.busy.contains_key(p) && !self.blocked.contains_key(p)
                }
            };
            if free {
                if let Some(p) = &w.patient {
                    joined.insert(p.clone());
                }
                taken.push(w);
            } else {
                if let Some(p) = &w.patient {
                    held.insert(p.clone());
                }
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

/// The distinct patients of a batch.
pub(crate) fn patients_of<T>(batch: &[Waiting<T>]) -> HashSet<PatientKey> {
    batch.iter().filter_map(|w| w.patient.clone()).collect()
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
                item: (),
            },
            msg(6, 2),
        ]);
        assert_eq!(seqs(&s.take(10)), [6, 7]);
        assert_eq!(s.len(), 1);
        s.done(&patients_of(&first), []);
        assert_eq!(seqs(&s.take(10)), [8]);
    }

    /// Random interleavings of fetches, takes and answers (some with retries): each
    /// patient's messages are handed over in stream order, a patient never has two
    /// batches in flight, and everything fetched is handed over once.
    #[test]
    fn each_patients_messages_go_in_order_whatever_the_interleaving() {
        for seed in 0..200u64 {
            let mut rng = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut next = |n: u64| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (rng >> 33) % n
            };
            let mut s = Schedule::default();
            let mut published: Vec<(u64, u32)> = Vec::new();
            let mut server: Vec<(u64, u32)> = Vec::new(); // published or handed back, not fetched
            let mut inflight: Vec<Vec<Waiting<()>>> = Vec::new();
            let mut handed: HashMap<u32, Vec<u64>> = HashMap::new();
            let mut seq = 0;
            for _ in 0..300 {
                match next(5) {
                    0 => {
                        for _ in 0..next(4) {
                            seq += 1;
                            let p = next(5) as u32;
                            published.push((seq, p));
                            server.push((seq, p));
                        }
                    }
                    1 => {
                        // A fetch: redeliveries first, in sequence order, then the rest.
                        server.sort();
                        let n = next(4) as usize;
                        let got: Vec<(u64, u32)> = server.drain(..n.min(server.len())).collect();
                        s.add(got.into_iter().map(|(q, p)| msg(q, p)));
                    }
                    2 if inflight.len() < 3 => {
                        let batch = s.take(1 + next(3) as usize);
                        if !batch.is_empty() {
                            let mut busy = HashSet::new();
                            for b in &inflight {
                                busy.extend(patients_of(b));
                            }
                            for w in &batch {
                                let p = w.patient.as_ref().expect("keyed");
                                assert!(!busy.contains(p), "seed {seed}: two batches of {p:?}");
                            }
                            inflight.push(batch);
                        }
                    }
                    _ if !inflight.is_empty() => {
                        let batch = inflight.remove(next(inflight.len() as u64) as usize);
                        // Maybe a retry of the batch's earliest message of one patient
                        // and everything after it for that patient.
                        let mut retried = Vec::new();
                        let mut failed: HashSet<PatientKey> = HashSet::new();
                        if next(3) == 0 {
                            failed.insert(batch[0].patient.clone().expect("keyed"));
                        }
                        for w in &batch {
                            let p = w.patient.clone().expect("keyed");
                            let n = number(w);
                            if failed.contains(&p) {
                                retried.push((p, w.sequence));
                                server.push((w.sequence, n));
                            } else {
                                handed.entry(n).or_default().push(w.sequence);
                            }
                        }
                        if !retried.is_empty() && next(2) == 0 {
                            // The redelivery reaches a fetch in flight before the answer.
                            server.retain(|(q, _)| !retried.iter().any(|(_, r)| r == q));
                            s.add(retried.iter().map(|(p, q)| Waiting {
                                sequence: *q,
                                patient: Some(p.clone()),
                                item: (),
                            }));
                        }
                        s.done(&patients_of(&batch), retried);
                    }
                    _ => {}
                }
            }
            // Then no more failures: everything is handed over, nothing stays blocked.
            server.sort();
            s.add(server.drain(..).map(|(q, p)| msg(q, p)));
            let mut answer = |s: &mut Schedule<()>, b: Vec<Waiting<()>>| {
                for w in &b {
                    handed.entry(number(w)).or_default().push(w.sequence);
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
            assert_eq!(
                handed.values().map(Vec::len).sum::<usize>(),
                published.len(),
                "seed {seed}"
            );
            for (p, seqs) in &handed {
                let mut sorted = seqs.clone();
                sorted.sort();
                assert_eq!(&sorted, seqs, "seed {seed}: patient {p} out of order");
            }
        }
    }
}
