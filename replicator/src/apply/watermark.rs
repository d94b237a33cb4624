//! The checkpoint watermark: writes finish out of order, but a checkpoint may only name a sequence
//! number when every record up to it has been applied.

use crate::stream::SeqNo;

/// Tracks which records of a batch are settled.
#[derive(Debug)]
pub struct Watermark {
    seqs: Vec<SeqNo>,
    done: Vec<bool>,
    /// Number of records settled from the start without a hole.
    prefix: usize,
    /// The prefix reported by the last [`Watermark::advance`].
    reported: usize,
}

impl Watermark {
    /// A batch with these sequence numbers, in shard order, none settled.
    pub fn new(seqs: Vec<SeqNo>) -> Watermark {
        let done = vec![false; seqs.len()];
        Watermark {
            seqs,
            done,
            prefix: 0,
            reported: 0,
        }
    }

    /// Marks records settled (applied, lost a conflict, or skipped by rule).
    pub fn settle(&mut self, indexes: &[usize]) {
        for &i in indexes {
            if let Some(d) = self.done.get_mut(i) {
                *d = true;
            }
        }
        while self.prefix < self.done.len() && self.done[self.prefix] {
            self.prefix += 1;
        }
    }

    /// The sequence number to checkpoint, if the watermark moved since the last call.
    pub fn advance(&mut self) -> Option<SeqNo> {
        if self.prefix > self.reported {
            self.reported = self.prefix;
            Some(self.seqs[self.prefix - 1].clone())
        } else {
            None
        }
    }

    /// The highest settled sequence number with nothing unsettled before it.
    pub fn current(&self) -> Option<&SeqNo> {
        self.prefix.checked_sub(1).map(|i| &self.seqs[i])
    }

    /// True when every record is settled.
    pub fn complete(&self) -> bool {
        self.prefix == self.seqs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(n: usize) -> Vec<SeqNo> {
        (1..=n)
            .map(|i| SeqNo::parse(&(i * 10).to_string()).unwrap())
            .collect()
    }

    #[test]
    fn moves_only_over_a_settled_prefix_when_writes_finish_out_of_order() {
        let mut w = Watermark::new(seqs(5));
        w.settle(&[2]);
        w.settle(&[4]);
        assert_eq!(w.advance(), None, "record 0 is not applied yet");
        assert_eq!(w.current(), None);
        w.settle(&[0]);
        assert_eq!(w.advance().unwrap().as_str(), "10");
        assert_eq!(w.advance(), None, "reported once");
        w.settle(&[1]);
        assert_eq!(
            w.advance().unwrap().as_str(),
            "30",
            "0, 1 and 2 are settled"
        );
        assert!(!w.complete());
        w.settle(&[3]);
        assert_eq!(w.advance().unwrap().as_str(), "50");
        assert!(w.complete());
    }

    #[test]
    fn a_squashed_write_settles_every_record_it_covers() {
        // Records 0 and 3 are the same key; the write for record 3 covers both.
        let mut w = Watermark::new(seqs(4));
        w.settle(&[1, 2]);
        assert_eq!(w.advance(), None);
        w.settle(&[0, 3]);
        assert_eq!(w.advance().unwrap().as_str(), "40");
    }

    #[test]
    fn an_empty_batch_has_no_checkpoint() {
        let mut w = Watermark::new(Vec::new());
        assert!(w.complete());
        assert_eq!(w.advance(), None);
    }
}
